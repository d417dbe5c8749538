//! Where one training step's time goes on MiniLM (forward, backward, optimizer), for profiling.
use std::time::Instant;

use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::Ctx;
use rmroute::train::loss::pairwise_loss;
use rmroute::train::optim::{AdamW, AdamWConfig};

fn main() -> anyhow::Result<()> {
    let model = RewardModel::load(
        std::path::Path::new("models/all-MiniLM-L6-v2"),
        &LoadOptions { train_encoder: true, new_head: true, ..Default::default() },
    )?;
    let text = "word ".repeat(120);
    let inputs: Vec<(&str, &str)> = (0..32).map(|_| (text.as_str(), "a reply")).collect();
    let batch = model.encode(&inputs)?;
    let mut opt =
        AdamW::new(model.trainable_vars(&[]), AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 })?
            .with_clipping(1.0);
    for _ in 0..2 {
        let t = Instant::now();
        let r = model.forward(&batch, &Ctx::eval())?;
        println!("forward eval {:?}", t.elapsed());
        let t = Instant::now();
        let r2 = model.forward(&batch, &Ctx::train(1))?;
        println!("forward train {:?}", t.elapsed());
        let loss = pairwise_loss(&r2.narrow(0, 0, 16)?, &r2.narrow(0, 16, 16)?)?;
        let t = Instant::now();
        let g = loss.backward()?;
        println!("backward {:?}", t.elapsed());
        let mut acc = opt.empty_grads();
        opt.accumulate(&g, &mut acc)?;
        let t = Instant::now();
        opt.step(&acc, 1e-5)?;
        println!("optimizer {:?}", t.elapsed());
        drop(r);
    }
    Ok(())
}
