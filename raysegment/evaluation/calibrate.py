"""`raysegment calibrate`: fit the quality_score calibration of a checkpoint on a labelled split.

    val images (+ `copies` randomly shifted copies of each, evaluation/shifts.random_shift)
      (decoded by data/model_input.decode_frame, the shifts applied to that image and its mask)
      -> predict exactly as infer does (to_model_input, postprocess/scoring.score)
      -> quality features (postprocess/quality.py) of the scored mask and its real dice
      -> logistic curve features -> dice (least squares); flag threshold;
         references = the split's expert masks
      -> CHECKPOINT/calibration.json

Only the validation split is used (never test): the reference masks are its expert masks, and an image's
features are computed with its own mask left out of the references (leave-one-out), as for a new image.
The shifted copies teach the regression what failures look like; their families match the measured
shifts but their strengths are random, so bench/qc_quality.py never scores a shift the fit has seen.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from raysegment.postprocess.quality import FEATURES, Calibration, References, features, save_calibration

DEFAULT_COPIES = 12  # shifted copies per validation image (20 val images -> 260 samples on Montgomery)
L2 = 0.01  # weight decay on the standardized coefficients (keeps the curve finite on separable fits)
GOOD_DICE = 0.95  # "good" masks: the flag rule may flag at most MAX_GOOD_FLAGGED of them on the fit data
MAX_GOOD_FLAGGED = 0.05
BAD_DICE = 0.85


def load_originals(pairs) -> list[tuple[np.ndarray, np.ndarray]]:
    """(float32 HxW image as the model sees it, bool HxW expert mask) of each pair: the image through the
    one input path's decode step (data/model_input.decode_frame: EXIF, inversion check), so the shifts
    below start from exactly what infer would segment."""
    from raysegment.data.datasets import load_mask
    from raysegment.data.model_input import decode_frame
    from raysegment.io import storage

    out = []
    for pair in pairs:
        frame = decode_frame(storage.read_bytes(pair.image_uri), pair.image_uri)
        out.append((frame.image, load_mask(pair.mask_uris, frame.image.shape, pair.image_uri)))
    return out


def predict_samples(loaded, images: list[tuple[np.ndarray, np.ndarray]], threshold: float, refs: References,
                    exclude: list[int | None], postprocess_config=None, batch: int = 16) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """Features (N, F) and real dice (N,) of (float32 HxW image, bool HxW truth) pairs, predicted and
    scored as infer does: data/model_input.to_model_input, then postprocess/scoring.score with the truth
    in memory (a shifted copy's mask is in no file); the features come from the scored segmentation.

    exclude[i]: the reference to leave out for pair i (its own expert mask), or None.
    """
    from raysegment.data.model_input import to_model_input
    from raysegment.model.forward import forward_probabilities
    from raysegment.postprocess.masks import PostprocessConfig
    from raysegment.postprocess.scoring import score

    post = postprocess_config or PostprocessConfig()
    xs, ys = [], []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        prepared = [to_model_input(img, loaded.spec.preprocess) for img, _ in chunk]
        probs = forward_probabilities(loaded.model, np.stack([p[0] for p in prepared]))
        for k, ((_, truth), (_, geo), prob) in enumerate(zip(chunk, prepared, probs, strict=True)):
            scored = score(prob, geo, threshold, post, truth=truth, with_hd95=False)
            xs.append(features(scored.segmentation, refs, exclude[start + k]))
            ys.append(scored.metrics["dice"])
    return np.array(xs).reshape(-1, len(FEATURES)), np.array(ys, dtype=np.float64)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                      float]:
    """(mean, scale, coef, intercept) of y ~ sigmoid(standardized x @ coef + intercept), least squares.

    Least squares on the dice itself (not a log-likelihood): dice is a continuous target in [0, 1].
    """
    from scipy.optimize import minimize

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.column_stack([(x - mean) / scale, np.ones(len(x))])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        r = p - y
        penalty = np.r_[w[:-1], 0.0]
        return float(r @ r + l2 * penalty @ penalty), z.T @ (2 * r * p * (1 - p)) + 2 * l2 * penalty

    w = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
    return mean, scale, w[:-1], float(w[-1])


def choose_threshold(pred: np.ndarray, dice: np.ndarray) -> float:
    """The highest score threshold that flags at most MAX_GOOD_FLAGGED of the good (dice >= GOOD_DICE)
    samples.

    Flagging is `score < threshold`, so a higher threshold finds more bad masks; the bound on good masks
    wrongly flagged keeps the review queue worth looking at.
    """
    good = np.sort(pred[dice >= GOOD_DICE])
    if not len(good):
        return BAD_DICE
    allowed = int(np.floor(MAX_GOOD_FLAGGED * len(good)))
    return float(good[allowed])  # `allowed` good samples score strictly below it (ties aside)


def calibrate(checkpoint: str, data: str | None = None, split: str = "val", copies: int = DEFAULT_COPIES,
              seed: int = 0, threshold: float | None = None, progress: bool = False,
              out: str | None = None) -> Calibration:
    """Fit and store CHECKPOINT/calibration.json (see the module docstring); returns the calibration.

    With `out`, the checkpoint (config and weights) is copied to that folder and the calibration written
    there instead: the shipped reference model's folder is never written to."""
    from scipy.stats import spearmanr

    from raysegment.evaluation.evaluate import default_manifest, select_pairs
    from raysegment.evaluation.shifts import random_shift
    from raysegment.io import storage
    from raysegment.model.checkpoint import load_model

    t0 = time.perf_counter()
    loaded = load_model(checkpoint)
    if data is None:
        data = default_manifest(checkpoint)
        if not storage.exists(data):
            raise FileNotFoundError(f"no --data given and no split manifest beside the checkpoint ({data})")
    pairs, data, warning = select_pairs(data, split, loaded.config.get("split_digest"))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if len(pairs) < 2:
        raise ValueError(f"the '{split}' split of {data} has {len(pairs)} labelled images; "
                         "calibration needs >= 2")
    originals = load_originals(pairs)
    refs = References.from_masks([m for _, m in originals])
    rng = np.random.default_rng(seed)
    samples, owners, names = [], [], []
    for k, (image, mask) in enumerate(originals):
        for c in range(copies + 1):
            name, shift = ("none", lambda i, m: (i, m)) if c == 0 else random_shift(rng)
            samples.append(shift(image, mask))
            owners.append(k)
            names.append(name)
    pixel_threshold = loaded.spec.threshold
    x, y = predict_samples(loaded, samples, pixel_threshold, refs, owners)
    mean, scale, coef, intercept = fit_logistic(x, y)
    fitted = Calibration(loaded.model_id, refs, tuple(mean), tuple(scale), tuple(coef), intercept, 0.0)
    pred = fitted.predict(x)
    chosen = choose_threshold(pred, y) if threshold is None else float(threshold)
    stats = {
        "data": data, "split": split, "images": len(pairs), "copies_per_image": copies, "seed": seed,
        "samples": len(y), "l2": L2,
        # undefined (and a scipy warning on the console) when every sample has the same dice or score
        "fit_spearman": float(spearmanr(pred, y).statistic) if np.ptp(pred) > 0 and np.ptp(y) > 0 else None,
        "fit_mae": float(np.abs(pred - y).mean()),
        "fit_bad_found": _share(pred[y < BAD_DICE] < chosen),
        "fit_good_flagged": _share(pred[y >= GOOD_DICE] < chosen),
        "samples_below_0.85": int((y < BAD_DICE).sum()), "seconds": round(time.perf_counter() - t0, 1),
        "threshold_rule": "given" if threshold is not None else
        f"highest flagging <= {MAX_GOOD_FLAGGED:.0%} of fit samples with dice >= {GOOD_DICE}",
    }
    calibration = Calibration(loaded.model_id, refs, tuple(map(float, mean)), tuple(map(float, scale)),
                              tuple(map(float, coef)), float(intercept), round(chosen, 4), fitted_on=stats)
    if out is not None:
        from raysegment.model.checkpoint import copy_checkpoint

        copy_checkpoint(checkpoint, out)
    uri = save_calibration(out or checkpoint, calibration)
    if progress:
        print(f"calibrated {checkpoint} on {len(pairs)} '{split}' images x {copies + 1} variants "
              f"({len(y)} samples, {stats['seconds']} s): "
              f"fit Spearman {_fmt(stats['fit_spearman'])}, MAE {stats['fit_mae']:.3f}; "
              f"flag threshold {calibration.threshold:.3f} -> {uri} "
              f"(calibration_id {calibration.calibration_id})")
    return calibration


def _fmt(value: float | None) -> str:
    return "undefined (constant)" if value is None else f"{value:.3f}"


def _share(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if len(flags) else None
