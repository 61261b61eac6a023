//! The pictures a training run leaves beside its checkpoints: the validation patches with their
//! predicted masks (the curves are drawn from `history.csv` by `report::plot_history`).

use super::*;

/// Save a picture, or say why not: pictures never stop a training run.
pub(super) fn picture(what: &str, result: Result<(), ReportError>) {
    if let Err(e) = result {
        eprintln!("warning: no {what}: {e}");
    }
}

/// `val_predictions.png`: the first few validation patches as image | truth | prediction.
pub(super) fn save_predictions(
    trainer: &Trainer,
    patches: &Patches,
    palette: &Palette,
    scaling: Scaling,
    path: &Path,
) -> anyhow::Result<()> {
    let count = patches.len().min(4);
    if count == 0 {
        return Ok(());
    }
    let first = patches.select(&(0..count).collect::<Vec<_>>());
    let options = BatchOptions { batch_size: count, shuffle: false, scaling, ..BatchOptions::default() };
    let batch = first.batches(&options)?.next().expect("one batch");
    let size = batch.size;
    let x = trainer.gpu.upload(&batch.images, &[count, 3, size, size]);
    let predicted = trainer.predict(&x);
    let samples: Vec<Sample> = (0..count)
        .map(|i| Sample {
            width: size,
            height: size,
            rgb: first.image(i).to_vec(),
            truth: first.label(i).to_vec(),
            prediction: predicted[i * size * size..(i + 1) * size * size].to_vec(),
        })
        .collect();
    picture("validation picture", overlay_grid(&samples, palette, path));
    Ok(())
}
