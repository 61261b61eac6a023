//! Progress while an epoch trains: a bar on a terminal, a Keras-like line at least every
//! [`LOG_EVERY`] in a log file (where a bar would print nothing until the epoch ends), and,
//! a few steps into the run, one line with an estimate of the whole run's time.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a log (no terminal) gets a progress line.
pub const LOG_EVERY: Duration = Duration::from_secs(15);

/// Steps left out of the estimate of the whole run: the first compiles the pipelines and
/// allocates the buffers, and the CPU waits for the GPU's first run of them in the second
/// (a CPU driver compiles some of its code then).
const WARM_UP: usize = 2;

/// Steps timed, after [`WARM_UP`], for the estimate.
const TIMED: usize = 4;

/// The progress of one epoch's training steps.
pub struct Progress {
    bar: indicatif::ProgressBar,
    /// Print lines instead of a bar (stderr is no terminal).
    lines: bool,
    show: bool,
    steps: usize,
    started: Instant,
    last_line: Instant,
    /// When step [`WARM_UP`] ended: the steady steps are timed from there.
    warm: Option<Instant>,
}

/// What the estimate of the whole run needs besides this epoch's steps.
#[derive(Clone, Copy, Debug)]
pub struct RunShape {
    /// Epochs still to train after this one.
    pub later_epochs: usize,
    /// Validation batches each epoch evaluates (a forward pass each).
    pub val_batches: usize,
}

impl Progress {
    /// Start an epoch of `steps` steps; `show: false` prints nothing at all.
    pub fn epoch(show: bool, steps: usize) -> Progress {
        let lines = !std::io::stderr().is_terminal();
        let bar = if show && !lines { bar(steps) } else { indicatif::ProgressBar::hidden() };
        let now = Instant::now();
        Progress { bar, lines, show, steps, started: now, last_line: now, warm: None }
    }

    /// Step `done` (counted from 1) has been recorded; `loss` is the running mean loss so far,
    /// when one has been read back. With `run`, the first epoch of a run prints the estimate.
    pub fn step(&mut self, done: usize, loss: Option<f64>, run: Option<RunShape>) {
        let now = Instant::now();
        if done == WARM_UP {
            self.warm = Some(now);
        }
        if let Some(loss) = loss {
            self.bar.set_message(format!("loss: {loss:.4}"));
        }
        self.bar.set_position(done as u64);
        if !self.show {
            return;
        }
        if let (Some(run), Some(warm)) = (run, self.warm) {
            // Timed over TIMED steps, or over those the epoch has when it is shorter.
            if done == (WARM_UP + TIMED).min(self.steps) && done > WARM_UP {
                let per_step = (now - warm).as_secs_f64() / (done - WARM_UP) as f64;
                let so_far = (now - self.started).as_secs_f64();
                self.print(estimate_line(so_far, per_step, self.steps - done, self.steps, run));
            }
        }
        if self.lines && now - self.last_line >= LOG_EVERY && done < self.steps {
            self.last_line = now;
            let elapsed = (now - self.started).as_secs_f64();
            let eta = elapsed / done as f64 * (self.steps - done) as f64;
            let loss = loss.map_or(String::new(), |l| format!(" - loss: {l:.4}"));
            println!("{done}/{} - {elapsed:.0}s - ETA: {}{loss}", self.steps, clock(eta));
        }
    }

    /// The epoch's steps are done: clear the bar (the epoch's Keras line follows).
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }

    fn print(&self, line: String) {
        if self.lines {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

/// `"estimated training time: about 4 min 40 s in all, 4 min 26 s left (1.00 s a step; 256 steps
/// and 5 validations to go)"`: `so_far` seconds of this epoch are behind.
fn estimate_line(so_far: f64, per_step: f64, left_this_epoch: usize, steps: usize, run: RunShape) -> String {
    let steps_left = left_this_epoch + run.later_epochs * steps;
    // A validation batch runs the forward pass only: about a third of a training step.
    let validations = run.later_epochs + 1;
    let left = per_step * (steps_left as f64 + validations as f64 * run.val_batches as f64 / 3.0);
    format!(
        "estimated training time: about {} in all, {} left ({per_step:.2} s a step; {steps_left} steps and \
         {validations} validations to go)",
        clock(so_far + left),
        clock(left)
    )
}

/// `"4 min 10 s"`, `"12 s"`, `"1 h 02 min"`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}

fn bar(steps: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{pos}/{len} [{bar:30}] {elapsed_precise} ETA {eta_precise} ({per_sec}) {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_like_a_person_would_write_it() {
        assert_eq!(clock(0.4), "0 s");
        assert_eq!(clock(59.4), "59 s");
        assert_eq!(clock(250.0), "4 min 10 s");
        assert_eq!(clock(3725.0), "1 h 02 min");
    }

    #[test]
    fn the_estimate_counts_later_epochs_and_validation() {
        // 14 s behind, 1 s a step, 48 steps left of 52, 4 more epochs of 52, validations of 6
        // batches: 48 + 208 steps, and 5 validations of 6 batches at a third of a step, 266 s.
        let line = estimate_line(14.0, 1.0, 48, 52, RunShape { later_epochs: 4, val_batches: 6 });
        assert_eq!(
            line,
            "estimated training time: about 4 min 40 s in all, 4 min 26 s left (1.00 s a step; 256 steps and 5 \
             validations to go)"
        );
    }
}
