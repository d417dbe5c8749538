//! One `label-aspects` run: read the splits, ask every question not answered before with a few
//! worker threads, rewrite each split as soon as its questions are done, and count the outcome.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::answers::{AnswerKey, AnswerLog, AnswerRecord};
use super::client::{AskError, ChatClient, ClientError, Failure};
use super::splits::{refuse_foreign_labels, rewrite_split, summarise, SplitAnswers, SplitData};
use super::{
    parse_verdict, question_hash, question_messages, request_body, Aspect, LabelSummary, Order, UnansweredQuestion,
    Verdict,
};
use crate::data::domains::resolve_domains;
use crate::data::{read_pairs, PairRecord};
use crate::io::write_atomic;

/// The answer log's name inside each domain folder.
pub const ANSWERS_FILE: &str = "aspect-answers.jsonl";
/// The summary's name inside the data folder.
pub const SUMMARY_FILE: &str = "aspect-labels.json";

/// Questions in a row that ran out of retries on server or network failures before the run gives up:
/// the server is down, and asking on would only spend every question's retries. Questions refused or
/// answered badly count in whole pairs instead (one pair's questions fail together: too long, filtered),
/// and only while nothing was ever answered, since then the request itself is at fault.
const MAX_FAILED_IN_A_ROW: usize = 8;
/// Unanswered questions named on stderr; the rest are only counted.
const SHOWN_UNANSWERED: usize = 5;

/// What to label, and with which judge model.
pub struct LabelOptions {
    pub data: PathBuf,
    /// Domains to label; empty: every prepared domain.
    pub domains: Vec<String>,
    pub splits: Vec<String>,
    pub aspects: Vec<Aspect>,
    pub model: String,
    /// The request's `max_tokens`; 0 leaves it out.
    pub max_tokens: u32,
    pub concurrency: usize,
    /// Replace labels of the asked points that label-aspects did not write.
    pub overwrite: bool,
    pub quiet: bool,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunReport {
    pub summary: LabelSummary,
    /// Questions in all (pairs × capability points × 2 orders).
    pub questions: usize,
    /// Answered in an earlier run.
    pub reused: usize,
    /// Answered in this run.
    pub asked: usize,
    /// Retried failures, by kind.
    pub retries: BTreeMap<&'static str, usize>,
    /// Questions whose retries ran out or that the server refused; asked again next run.
    pub unanswered: usize,
    /// Split files whose labels changed.
    pub rewritten: Vec<PathBuf>,
    pub summary_path: PathBuf,
}

struct Job {
    split: usize,
    record: usize,
    aspect: usize,
    order: Order,
    question: String,
}

enum Event {
    Retry(Failure),
    Answered { job: usize, verdict: Verdict, reply: String },
    Unanswered { job: usize, failure: Failure },
    Fatal(ClientError),
}

/// The two messages of a record's question, with the responses in `order`.
fn messages_for(record: &PairRecord, aspect: &Aspect, order: Order) -> [String; 2] {
    match order {
        Order::ChosenFirst => question_messages(&record.prompt, &record.chosen, &record.rejected, aspect),
        Order::RejectedFirst => question_messages(&record.prompt, &record.rejected, &record.chosen, aspect),
    }
}

pub fn label_aspects(opts: &LabelOptions, client: &ChatClient) -> Result<RunReport> {
    let domains = resolve_domains(&opts.data, &opts.domains)?;
    let mut report = RunReport::default();
    let Questions { logs, data, state, jobs } = read_questions(opts, &domains, &mut report)?;
    report.questions = report.reused + jobs.len();
    for (s, split) in state.iter().enumerate() {
        if split.pending == 0 && rewrite_split(&data[s], &split.answers, &opts.aspects)? {
            report.rewritten.push(data[s].path.clone());
        }
    }

    let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(report.questions as u64) };
    bar.set_style(ProgressStyle::with_template(
        "asking {bar:30} {pos}/{len} questions [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    bar.set_position(report.reused as u64);
    let stop = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let mut run = Answers {
        opts,
        client,
        jobs: &jobs,
        data: &data,
        logs,
        state,
        report,
        bar: &bar,
        stop: &stop,
        error: None,
        failed_in_a_row: 0,
        unanswered: Vec::new(),
    };
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..opts.concurrency.max(1).min(jobs.len()) {
            let tx = tx.clone();
            let (jobs, data, stop, next) = (&jobs, &data, &stop, &next);
            scope.spawn(move || worker(jobs, data, opts, client, next, stop, tx));
        }
        drop(tx);
        for event in rx {
            run.take(event);
        }
    });
    bar.finish_and_clear();
    let Answers { state, mut report, error, unanswered, .. } = run;
    if let Some(e) = error {
        bail!(
            "{e:#}\n(the answers obtained so far are kept in {}/<domain>/{ANSWERS_FILE}; the same command asks only \
             the questions left)",
            opts.data.display()
        );
    }

    report.summary = summarise(&opts.model, &opts.splits, &opts.aspects, &domains, &data, &state);
    report.summary.unanswered = unanswered;
    report.summary_path = opts.data.join(SUMMARY_FILE);
    let mut json = serde_json::to_vec_pretty(&report.summary)?;
    json.push(b'\n');
    write_atomic(&report.summary_path, &json).with_context(|| format!("writing {}", report.summary_path.display()))?;
    Ok(report)
}

/// Every split to label, its answers from earlier runs, and the questions left to ask.
struct Questions {
    /// Each domain's answer log.
    logs: Vec<AnswerLog>,
    data: Vec<SplitData>,
    state: Vec<SplitAnswers>,
    jobs: Vec<Job>,
}

/// Reads every split of `domains` and its answer log; counts the answers reused in `report`.
fn read_questions(opts: &LabelOptions, domains: &[String], report: &mut RunReport) -> Result<Questions> {
    let n_aspects = opts.aspects.len();
    let mut questions = Questions { logs: Vec::new(), data: Vec::new(), state: Vec::new(), jobs: Vec::new() };
    for (d, domain) in domains.iter().enumerate() {
        let (log, stored) = AnswerLog::open(&opts.data.join(domain).join(ANSWERS_FILE), &opts.model)?;
        if stored.skipped_partial_line {
            eprintln!("{}: dropped a last line cut short by a killed run", log.path().display());
        }
        for name in &opts.splits {
            let path = opts.data.join(domain).join(format!("{name}.jsonl"));
            if !path.is_file() {
                bail!("no {} (run `rmroute prepare` first, or leave the split out with --splits)", path.display());
            }
            let records = read_pairs(&path)?;
            if !opts.overwrite {
                refuse_foreign_labels(&path, name, &records, &opts.aspects, &stored.labels)?;
            }
            let mut answers = vec![[None; 2]; records.len() * n_aspects];
            let mut pending = 0;
            for (r, record) in records.iter().enumerate() {
                for (a, aspect) in opts.aspects.iter().enumerate() {
                    for order in Order::BOTH {
                        let question = question_hash(&messages_for(record, aspect, order));
                        let key = AnswerKey {
                            split: name.clone(),
                            id: record.id.clone(),
                            aspect: aspect.name.clone(),
                            order,
                            question,
                        };
                        match stored.answers.get(&key) {
                            Some(verdict) => {
                                answers[r * n_aspects + a][order.index()] = Some(*verdict);
                                report.reused += 1;
                            }
                            None => {
                                let split = questions.data.len();
                                questions.jobs.push(Job { split, record: r, aspect: a, order, question: key.question });
                                pending += 1;
                            }
                        }
                    }
                }
            }
            questions.data.push(SplitData { domain: d, name: name.clone(), path, records });
            questions.state.push(SplitAnswers { answers, pending });
        }
        questions.logs.push(log);
    }
    Ok(questions)
}

/// The answers as the workers report them: logged, counted, and each split rewritten once its last
/// question is done; the first error stops the workers.
struct Answers<'a> {
    opts: &'a LabelOptions,
    client: &'a ChatClient,
    jobs: &'a [Job],
    data: &'a [SplitData],
    logs: Vec<AnswerLog>,
    state: Vec<SplitAnswers>,
    report: RunReport,
    bar: &'a ProgressBar,
    stop: &'a AtomicBool,
    error: Option<anyhow::Error>,
    failed_in_a_row: usize,
    unanswered: Vec<UnansweredQuestion>,
}

impl Answers<'_> {
    fn fail(&mut self, e: anyhow::Error) {
        self.stop.store(true, Ordering::Relaxed);
        self.error.get_or_insert(e);
    }

    /// One worker's event.
    fn take(&mut self, event: Event) {
        let job = match event {
            Event::Retry(failure) => {
                *self.report.retries.entry(failure.kind()).or_default() += 1;
                self.bar.set_message(format!("{} retried", self.report.retries.values().sum::<usize>()));
                return;
            }
            Event::Fatal(e) => return self.fail(e.into()),
            Event::Answered { job, verdict, reply } => {
                if let Err(e) = self.answered(job, verdict, reply) {
                    return self.fail(e);
                }
                job
            }
            Event::Unanswered { job, failure } => {
                if let Some(e) = self.unanswered(job, failure) {
                    self.fail(e);
                }
                job
            }
        };
        self.bar.inc(1);
        let j = &self.jobs[job];
        let split = &mut self.state[j.split];
        split.pending -= 1;
        if split.pending == 0 {
            match rewrite_split(&self.data[j.split], &split.answers, &self.opts.aspects) {
                Ok(true) => self.report.rewritten.push(self.data[j.split].path.clone()),
                Ok(false) => {}
                Err(e) => self.fail(e),
            }
        }
    }

    /// Logs an answer and keeps its verdict.
    fn answered(&mut self, job: usize, verdict: Verdict, reply: String) -> Result<()> {
        let (opts, j) = (self.opts, &self.jobs[job]);
        let split = &self.data[j.split];
        let record = AnswerRecord {
            split: split.name.clone(),
            id: split.records[j.record].id.clone(),
            aspect: opts.aspects[j.aspect].name.clone(),
            order: j.order,
            model: opts.model.clone(),
            question: j.question.clone(),
            answer: verdict,
            reply,
        };
        self.logs[split.domain].append(&record)?;
        self.state[j.split].answers[j.record * opts.aspects.len() + j.aspect][j.order.index()] = Some(verdict);
        self.report.asked += 1;
        self.failed_in_a_row = 0;
        Ok(())
    }

    /// Counts a question left unanswered (named on stderr for the first few); an error when failures in
    /// a row say the server is down or takes no request of this form.
    fn unanswered(&mut self, job: usize, failure: Failure) -> Option<anyhow::Error> {
        let (opts, j) = (self.opts, &self.jobs[job]);
        let split = &self.data[j.split];
        self.report.unanswered += 1;
        let count = self.report.unanswered;
        if count <= SHOWN_UNANSWERED {
            self.bar.suspend(|| {
                eprintln!(
                    "unanswered ({failure}): {} `{}`, {}, {}{}",
                    split.path.display(),
                    split.records[j.record].id,
                    opts.aspects[j.aspect].name,
                    j.order,
                    if count == SHOWN_UNANSWERED { " (further ones only counted)" } else { "" }
                )
            });
        }
        self.unanswered.push(UnansweredQuestion {
            file: split.path.clone(),
            id: split.records[j.record].id.clone(),
            aspect: opts.aspects[j.aspect].name.clone(),
            order: j.order,
            reason: failure.to_string(),
        });
        self.failed_in_a_row += 1;
        let failed_in_a_row = self.failed_in_a_row;
        let limit = MAX_FAILED_IN_A_ROW.max(2 * opts.concurrency);
        if failure.is_transport() {
            (failed_in_a_row >= limit).then(|| {
                anyhow!(
                    "{failed_in_a_row} questions in a row failed every retry (last: {failure}); is the server at {} up?",
                    self.client.url()
                )
            })
        } else if failed_in_a_row < limit * 2 * opts.aspects.len() || self.report.reused + self.report.asked > 0 {
            None
        } else if let Failure::Refused { .. } = failure {
            Some(anyhow!(
                "{failed_in_a_row} questions in a row were refused and none was ever answered (last: {failure}): the \
                 server takes no request of this form; check --model, and --max-tokens (0 leaves the field out)"
            ))
        } else {
            Some(anyhow!(
                "{failed_in_a_row} questions in a row got no usable answer and none was ever answered (last: \
                 {failure}); a thinking model needs a larger --max-tokens (or 0 for no limit)"
            ))
        }
    }
}

fn worker(
    jobs: &[Job],
    data: &[SplitData],
    opts: &LabelOptions,
    client: &ChatClient,
    next: &AtomicUsize,
    stop: &AtomicBool,
    tx: mpsc::Sender<Event>,
) {
    while !stop.load(Ordering::Relaxed) {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(i) else { return };
        let record = &data[job.split].records[job.record];
        let body =
            request_body(&opts.model, &messages_for(record, &opts.aspects[job.aspect], job.order), opts.max_tokens);
        let mut on_retry = |failure: &Failure| {
            let _ = tx.send(Event::Retry(failure.clone()));
        };
        let event = match client.ask(&body, parse_verdict, stop, &mut on_retry) {
            Ok((verdict, reply)) => Event::Answered { job: i, verdict, reply },
            Err(AskError::Unanswered(failure)) => Event::Unanswered { job: i, failure },
            Err(AskError::Fatal(e)) => {
                // Stop the other workers now, not once the main thread reads this.
                stop.store(true, Ordering::Relaxed);
                Event::Fatal(e)
            }
            Err(AskError::Stopped) => return,
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}
