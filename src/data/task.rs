//! Task categories: DMoERM's outer router routes by task, which is a pair's domain unless the records
//! carry a `task` field (a domain folder may then hold several tasks, and a task span several folders).

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::PairRecord;

/// `by_domain`'s pairs regrouped by their `task` field; none when no record carries one. Some records
/// with a task and some without is an error (a pair without one would be routed by a guess), as is a
/// task name that cannot name a stage directory.
pub fn group_by_task(
    by_domain: &BTreeMap<String, Vec<PairRecord>>,
) -> Result<Option<BTreeMap<String, Vec<PairRecord>>>> {
    let all = || by_domain.values().flatten();
    let Some(with) = all().find(|p| p.task.is_some()) else { return Ok(None) };
    if let Some(without) = all().find(|p| p.task.is_none()) {
        bail!(
            "record `{}` (domain `{}`) has no `task` while record `{}` has one: give every record of the run's \
             domains a `task`, or none (the tasks are then the domains)",
            without.id,
            without.domain,
            with.id
        );
    }
    let mut tasks: BTreeMap<String, Vec<PairRecord>> = BTreeMap::new();
    for pair in all() {
        let task = pair.task.clone().unwrap_or_default();
        if let Err(why) = super::record::check_name(&task) {
            bail!("record `{}`: `task` is not a task name: {why}", pair.id);
        }
        tasks.entry(task).or_default().push(pair.clone());
    }
    Ok(Some(tasks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(id: &str, domain: &str, task: Option<&str>) -> PairRecord {
        PairRecord {
            id: id.into(),
            domain: domain.into(),
            prompt: "p".into(),
            chosen: "c".into(),
            rejected: "r".into(),
            aspects: None,
            task: task.map(str::to_string),
        }
    }

    #[test]
    fn regroups_by_task_across_domains_and_refuses_a_mix() {
        let mut by_domain = BTreeMap::new();
        by_domain.insert("a".to_string(), vec![pair("a/1", "a", Some("code")), pair("a/2", "a", Some("chat"))]);
        by_domain.insert("b".to_string(), vec![pair("b/1", "b", Some("code"))]);
        let tasks = group_by_task(&by_domain).unwrap().unwrap();
        let ids = |t: &str| tasks[t].iter().map(|p| p.id.as_str()).collect::<Vec<_>>();
        assert_eq!((ids("code"), ids("chat")), (vec!["a/1", "b/1"], vec!["a/2"]));

        by_domain.get_mut("b").unwrap().push(pair("b/2", "b", None));
        let err = group_by_task(&by_domain).unwrap_err().to_string();
        assert!(err.contains("`b/2`") && err.contains("no `task`"), "{err}");
        by_domain.get_mut("b").unwrap().pop();
        by_domain.get_mut("b").unwrap().push(pair("b/3", "b", Some("../x")));
        assert!(group_by_task(&by_domain).unwrap_err().to_string().contains("not a task name"));

        let plain: BTreeMap<String, Vec<PairRecord>> = [("a".to_string(), vec![pair("a/1", "a", None)])].into();
        assert!(group_by_task(&plain).unwrap().is_none());
    }
}
