"""Benchmark: cnnlab's Score-CAM against the implementation it replaced, measured in the same run.

    python scripts/scorecam_speed.py                  # 50 single-digit canvases of 128 px, the trained ResNet-20
    python scripts/scorecam_speed.py --digits 3       # or --clutter 8: the other canvas kinds

The model is outputs/canvas/train/checkpoints/best.pt where it exists (`--checkpoint`), else an untrained
ResNet-20 with non-trivial BN statistics. The canvases come from the MNIST sample's test digits. Batches of
canvases are timed old/new alternately (the order swapped every batch: the CPU is shared, timings are noisy);
the report is the ratio of the summed times and the median of the per-batch ratios, the largest difference of
the maps (raw, and after the per-image min-max normalization every map gets), and what the masks held: dead
channels (a mask all zero), masked images that are the black canvas, and distinct masked images. A benchmark,
not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnlab.data import sources  # noqa: E402
from cnnlab.data.canvas import make_canvases  # noqa: E402
from cnnlab.models.resnet import ResNet  # noqa: E402
from cnnlab.tasks.build import restore_model  # noqa: E402
from cnnlab.vision import make_method  # noqa: E402
from cnnlab.vision.maps import normalize_per_image  # noqa: E402

CHECKPOINT = ROOT / "outputs" / "canvas" / "train" / "checkpoints" / "best.pt"


def old_maps(self, x, logits, activations, classes):
    """ScoreCAM.maps as it was (the reference): per image, one forward per channel, `chunk` at a time."""
    masks = normalize_per_image(F.interpolate(activations, size=x.shape[2:], mode="bilinear", align_corners=False))
    black = x.new_zeros(x.shape[1], 1, 1) if self.black is None else self.black.to(x)
    probs = []
    for image, mask in zip(x, masks, strict=True):  # (C_in, H, W), (C, H, W)
        masked = black + (image[None] - black) * mask[:, None]  # one image per channel of the layer
        probs.append(torch.cat([self.model(part).softmax(dim=1) for part in masked.split(self.chunk)]))
    weights = torch.stack(probs).gather(2, classes[:, None, :].expand(-1, masks.shape[1], -1))  # (B, C, m)
    return F.relu(torch.einsum("bcm,bchw->bmhw", weights, activations))


def model_and_stats(checkpoint: Path) -> tuple[torch.nn.Module, list[float], list[float], str]:
    if checkpoint.is_file():
        model, saved, _ = restore_model(str(checkpoint), torch.device("cpu"), checkpoint.parent)
        return model, list(saved.dataset.mean), list(saved.dataset.std), str(checkpoint)
    torch.manual_seed(0)
    model = ResNet(depth=20, in_channels=1, num_classes=10).eval()
    for m in model.modules():  # non-trivial BN statistics, as after training (tests/helpers.py small_resnet)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model, [0.1307], [0.3081], "untrained ResNet-20 (no checkpoint at " + str(checkpoint) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--digits", type=int, default=1)
    parser.add_argument("--clutter", type=int, default=0)
    parser.add_argument("--batch", type=int, default=5, help="canvases per timed call")
    parser.add_argument("--layer", default=None, help="the hooked layer (default: the last, stage3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, mean, std, where = model_and_stats(args.checkpoint)
    data = sources.load("mnist_sample")
    canvases = make_canvases(data.test_x, data.test_y, args.count, args.size, args.digits, args.clutter, seed=0)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    images = (canvases.images.float() / 255 - m) / s
    black = ((0 - m) / s)[0]  # (C, 1, 1): a black pixel, normalized, as cnnlab.api.load gives it
    method = make_method("score-cam", model, args.layer, black)
    print(f"model: {where}; layer {method.layer}; {args.count} canvases of {args.size} px, digits={args.digits}, "
          f"clutter={args.clutter}; torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip

    warm = images[: args.batch]  # first calls (allocations, kernels chosen per shape) are not timed
    with torch.no_grad():
        run = method.forward(warm)[0]
        for maps in (lambda *a: old_maps(method, *a), method.maps):
            maps(warm, run.logits, run.activations, torch.arange(method.num_classes).expand(len(warm), -1))

    times: dict[str, list[float]] = {"old": [], "new": []}
    worst_raw = worst_normalized = 0.0
    dead = black_images = distinct = channels = 0
    for n, x in enumerate(images.split(args.batch)):
        run = method.forward(x)[0]
        classes = torch.arange(method.num_classes).expand(len(x), -1)  # every class's map
        found = {}
        for name in ("old", "new") if n % 2 == 0 else ("new", "old"):
            maps = (lambda *a: old_maps(method, *a)) if name == "old" else method.maps
            start = time.perf_counter()
            with torch.no_grad():  # as ClassMapMethod.explain runs it
                found[name] = maps(x, run.logits, run.activations, classes)
            times[name].append(time.perf_counter() - start)
        worst_raw = max(worst_raw, (found["old"] - found["new"]).abs().max().item())
        normalized = [normalize_per_image(found[k]) for k in ("old", "new")]
        worst_normalized = max(worst_normalized, (normalized[0] - normalized[1]).abs().max().item())

        masks = normalize_per_image(F.interpolate(run.activations, size=x.shape[2:], mode="bilinear"))
        dead += int((masks.flatten(2).amax(-1) == 0).sum())
        for image, mask in zip(x, masks, strict=True):
            masked = black + (image[None] - black) * mask[:, None]
            hidden = (masked == black.expand_as(image)).flatten(1).all(1)
            black_images += int(hidden.sum())
            distinct += len(torch.unique(masked[~hidden].flatten(1), dim=0)) if not hidden.all() else 0
            channels += len(mask)
        print(f"batch {n}: old {times['old'][-1]:.2f} s, new {times['new'][-1]:.2f} s", flush=True)

    old, new = sum(times["old"]), sum(times["new"])
    ratios = [o / w for o, w in zip(times["old"], times["new"], strict=True)]
    median = statistics.median(ratios)
    print(f"old {old:.1f} s, new {new:.1f} s: {old / new:.2f}x faster (median per-batch ratio {median:.2f}x)")
    print(f"max abs map difference: {worst_raw:.3g} raw, {worst_normalized:.3g} after per-image min-max normalization")
    print(f"masks: {channels} (canvases x channels); dead (all zero) {dead}; masked image = the black canvas "
          f"{black_images}; distinct masked images (the black canvas aside) {distinct}")  # fmt: skip


if __name__ == "__main__":
    main()
