"""cnnlab's own class-map methods, each batched over the classes asked for (one backward pass for all of them).

fully-conv: the classifier as a 1x1 convolution on the last maps; their spatial mean is exactly the logits.
cam (Zhou et al. 2016): the same without the bias, sum_k w_ck A_k.
Gradient methods weight the activations A_k of any layer by the class score's gradients G_k:
grad-cam (Selvaraju et al. 2017) by their spatial mean; grad-cam++ (Chattopadhay et al. 2018) by
sum alpha ReLU(G) with alpha = G^2 / (2 G^2 + sum(A) G^3) (eq. 19); xgrad-cam (Fu et al. 2020) by sum(A G) / sum(A);
layer-cam (Jiang et al. 2021) by ReLU(G) at each position. Each map is ReLU(sum_k weights_k A_k).
score-cam (Wang et al. 2020), gradient-free: weight_k = the class probability of the image masked by A_k
(upsampled, min-max normalized) towards a black image; one pass per channel gives the weights of every class
(each distinct masked image runs once, the black image itself once a call; on cnnlab's ResNet a pass computes
only the box where its images differ from the black image: the same maps, on 128 px canvases ~15x faster with
one digit, 3x with three, 2x with clutter, whose box is the whole canvas; scripts/scorecam_speed.py measures it).
At the last layer of a GAP + linear network G_k = w_ck / (h w) everywhere, so grad-cam = ReLU(cam) / (h w),
and xgrad-cam, and layer-cam where w_c > 0, equal grad-cam.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlab.vision.maps import ClassMapMethod, normalize_per_image

EPS = 1e-7


class FullyConv(ClassMapMethod):
    name = "fully-conv"
    uses_layer = "last"
    scores = True
    threshold = 0.35  # score maps above an empty canvas's, at pixels: measured (0.3-0.4 within 1%)

    def maps(self, x: Tensor, logits: Tensor, activations: Tensor, classes: Tensor) -> Tensor:
        cam = torch.einsum("bmc,bchw->bmhw", self.fc.weight[classes], activations)
        return cam + self.fc.bias[classes][:, :, None, None]


class CAM(ClassMapMethod):
    name = "cam"
    uses_layer = "last"

    def maps(self, x: Tensor, logits: Tensor, activations: Tensor, classes: Tensor) -> Tensor:
        return torch.einsum("bmc,bchw->bmhw", self.fc.weight[classes], activations)


def class_gradients(logits: torch.Tensor, activations: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(m, B, C, h, w): the gradient of each image's score of classes[b, j] at the activations, in one pass."""
    picks = F.one_hot(classes.T, logits.shape[1]).to(logits.dtype)  # (m, B, K)
    (grads,) = torch.autograd.grad(logits, activations, grad_outputs=picks, is_grads_batched=True)
    return grads


class GradientMethod(ClassMapMethod):
    """Maps = ReLU(sum_k weights_k A_k); subclasses give the weights from A (B, C, h, w) and G (m, B, C, h, w)."""

    gradients = True

    def maps(self, x: Tensor, logits: Tensor, activations: Tensor, classes: Tensor) -> Tensor:
        grads = class_gradients(logits, activations, classes)
        a = activations.detach()
        return F.relu((self.weights(a, grads) * a).sum(dim=2)).transpose(0, 1)

    def weights(self, a: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GradCAM(GradientMethod):
    name = "grad-cam"

    def weights(self, a: Tensor, grads: Tensor) -> Tensor:
        return grads.mean(dim=(3, 4), keepdim=True)


class GradCAMPlusPlus(GradientMethod):
    name = "grad-cam++"

    def weights(self, a: Tensor, grads: Tensor) -> Tensor:
        # alpha = G^2 / (2 G^2 + sum(A) G^3) = 1 / (2 + sum(A) G) where G > 0, the only places ReLU(G) keeps;
        # written so, no epsilon is needed against G^2 (the gradients of one cell are small: 1e-3 and less)
        total = a.sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1), broadcast over the m classes
        alpha = 1 / (2 + total * grads).clamp(min=EPS)  # sum(A) >= 0 after a ReLU: the clamp only guards
        return torch.where(grads > 0, alpha * grads, 0.0).sum(dim=(3, 4), keepdim=True)


class XGradCAM(GradientMethod):
    name = "xgrad-cam"

    def weights(self, a: Tensor, grads: Tensor) -> Tensor:
        return (grads * a).sum(dim=(3, 4), keepdim=True) / (a.sum(dim=(2, 3), keepdim=True) + EPS)


class LayerCAM(GradientMethod):
    name = "layer-cam"

    def weights(self, a: Tensor, grads: Tensor) -> Tensor:
        return F.relu(grads)


class ScoreCAM(ClassMapMethod):
    name = "score-cam"
    chunk = 64  # masked images per forward pass

    def maps(self, x: Tensor, logits: Tensor, activations: Tensor, classes: Tensor) -> Tensor:
        masks = normalize_per_image(F.interpolate(activations, size=x.shape[2:], mode="bilinear", align_corners=False))
        # Hidden pixels become black, not 0 of the normalized input: that is the mean colour, a grey haze over a
        # black canvas that the class scores see (pointing 0.19 instead of 1.0 on MNIST canvases, measured).
        black = x.new_zeros(x.shape[1], 1, 1) if self.black is None else self.black.to(x)
        with torch.no_grad():  # the caller (explain) has autograd off already; maps() may be called directly
            probs = self.probabilities(x, masks, black)  # (B, C, K)
        weights = probs.gather(2, classes[:, None, :].expand(-1, masks.shape[1], -1))  # (B, C, m)
        return F.relu(torch.einsum("bcm,bchw->bmhw", weights, activations))

    def probabilities(self, x: Tensor, masks: Tensor, black: Tensor) -> Tensor:
        """(B, C, K): the class probabilities of each image masked by each of its C masks towards black.

        Exact savings only: a masked image that is the black canvas (a mask that is all zero, or zero wherever
        the image is not black) takes the black canvas's probabilities, computed once; identical masked images
        of an image run once; on cnnlab's ResNet, each forward computes only where the images differ from the
        black canvas (see resnet_runner), reading the rest off the black canvas's own activations.
        """
        canvas = black.expand_as(x[0])  # (C_in, H, W), the black canvas
        run, black_probs = self.resnet_runner(canvas) or self.plain_runner(canvas)
        probs = []
        for image, mask in zip(x, masks, strict=True):  # (C_in, H, W), (C, H, W)
            masked = black + (image[None] - black) * mask[:, None]  # one image per channel of the layer
            hidden = (masked == canvas).flatten(1).all(1)  # (C,): the black canvas itself
            out = black_probs.expand(len(masked), -1).clone()
            if not hidden.all():
                shown, again = torch.unique(masked[~hidden].flatten(1), dim=0, return_inverse=True)
                shown = shown.view(-1, *masked.shape[1:])
                out[~hidden] = torch.cat([run(part) for part in shown.split(self.chunk)])[again]
            probs.append(out)
        return torch.stack(probs)

    def plain_runner(self, canvas: Tensor) -> tuple:
        """(run, black): run maps images (n, C_in, H, W) to their class probabilities (n, K) by plain forward
        passes of the model (any model); black: the black canvas's (K,)."""
        return (lambda images: self.model(images).softmax(dim=1)), self.model(canvas[None]).softmax(dim=1)[0]

    def resnet_runner(self, canvas: Tensor) -> tuple | None:
        """plain_runner's (run, black) with forward passes of cnnlab's ResNet (in eval mode, without hooks) that
        compute each layer only where the images can differ from the black canvas; None for any other model.

        The images of a pass differ from the canvas in one box; a 3x3 convolution widens the box where its
        output can differ by a cell each side (a stride divides it), and outside the box every activation is the
        black canvas's, computed once. Each convolution runs on its box with the true values around it (the
        canvas's activations, or the zero padding at the border), so every value computed is the full
        network's, up to the order of float sums; the last maps are pooled whole, as the model pools them.
        """
        from cnnlab.models.resnet import BasicBlock, ResNet

        model = self.model
        if type(model) is not ResNet or type(model.stem) is not torch.nn.Sequential:
            return None
        blocks = [*model.stage1, *model.stage2, *model.stage3]
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        if (
            any(type(b) is not BasicBlock for b in blocks)
            or [type(m) for m in model.stem] != [torch.nn.Conv2d, type(model.stem[1]), torch.nn.ReLU]
            or any(m.training or m._forward_hooks or m._forward_pre_hooks for m in model.modules())
            or any(isinstance(m, torch.nn.BatchNorm2d) and m.running_var is None for m in model.modules())
            or any(c.dilation != (1, 1) or c.groups != 1 or c.padding_mode != "zeros" for c in convs)
            or any(isinstance(c.padding, str) or c.padding[0] >= c.kernel_size[0] for c in convs)
            or any(isinstance(c.padding, str) or c.padding[1] >= c.kernel_size[1] for c in convs)
        ):
            return None
        conv, norm, relu = model.stem
        cl = torch.channels_last
        folded = {c: ScoreCAM._folded(c, bn) for c, bn in [(conv, norm)] + [(b.conv1, b.bn1) for b in blocks]}
        folded.update({b.conv2: ScoreCAM._folded(b.conv2, b.bn2) for b in blocks})
        stem_pad = ScoreCAM._padded(canvas[None], conv).contiguous(memory_format=cl)
        bases = []  # per block: its input and its conv2's input, padded for conv1 and conv2; its output
        x = relu(norm(conv(canvas[None])))
        for block in blocks:
            h = F.relu(block.bn1(block.conv1(x)))
            out = block(x)
            padded = ScoreCAM._padded(x, block.conv1), ScoreCAM._padded(h, block.conv2)
            bases.append([b.contiguous(memory_format=cl) for b in (*padded, out)])
            x = out
        black = model.fc(torch.flatten(model.pool(x), 1)).softmax(dim=1)[0]

        def run(images: Tensor) -> Tensor:
            differs = (images != canvas).flatten(0, 1).any(0)  # (H, W)
            rows, cols = differs.any(1).nonzero()[:, 0], differs.any(0).nonzero()[:, 0]
            if len(rows) == 0:
                return black.expand(len(images), -1)
            box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
            t = images[:, :, box[0] : box[1], box[2] : box[3]]
            out_box = ScoreCAM._widened(box, conv, canvas.shape[1:])
            t, box = F.relu_(ScoreCAM._conv_on(conv, folded[conv], t, box, stem_pad, out_box)[0]), out_box
            for block, (x_pad, h_pad, out_base) in zip(blocks, bases, strict=True):
                size = out_base.shape[2:]
                out_box = ScoreCAM._widened(ScoreCAM._widened(box, block.conv1, size), block.conv2, size)
                h, window, (p, q) = ScoreCAM._conv_on(block.conv1, folded[block.conv1], t, box, x_pad, out_box)
                out = ScoreCAM._conv_on(block.conv2, folded[block.conv2], F.relu_(h), out_box, h_pad, out_box)[0]
                if block.shortcut is not None:  # it reads the block's input where conv1's window holds it
                    (s, u) = block.conv1.stride
                    rows, cols = s * (out_box[1] - out_box[0] - 1) + 1, u * (out_box[3] - out_box[2] - 1) + 1
                    out += block.shortcut(window[:, :, p : p + rows, q : q + cols])
                t, box = F.relu_(out), out_box
            whole = ScoreCAM._extended(t, box, bases[-1][2], (0, x.shape[2], 0, x.shape[3]))
            return model.fc(torch.flatten(model.pool(whole), 1)).softmax(dim=1)

        return run, black

    @staticmethod
    def _folded(conv: torch.nn.Conv2d, norm: torch.nn.Module) -> tuple[Tensor, Tensor | None]:
        """The weights and bias of `conv` followed by `norm` (eval-mode BatchNorm2d, or Identity) as one conv."""
        if not isinstance(norm, torch.nn.BatchNorm2d):
            return conv.weight, conv.bias
        scale = torch.rsqrt(norm.running_var + norm.eps)
        scale = scale if norm.weight is None else norm.weight * scale
        bias = -norm.running_mean * scale if norm.bias is None else norm.bias - norm.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        return conv.weight * scale[:, None, None, None], bias

    @staticmethod
    def _padded(base: Tensor, conv: torch.nn.Conv2d) -> Tensor:
        (p, q) = conv.padding
        return F.pad(base, (q, q, p, p))

    @staticmethod
    def _widened(box: tuple[int, ...], conv: torch.nn.Conv2d, size: torch.Size) -> tuple[int, ...]:
        """The output cells of `conv` that read any input cell of `box` (y0, y1, x0, x1, ends excluded)."""
        out = []
        for axis, n in enumerate(size):
            k, s, p = conv.kernel_size[axis], conv.stride[axis], conv.padding[axis]
            low, high = box[2 * axis], box[2 * axis + 1]
            out += [max(0, -(-(low + p - k + 1) // s)), min(n, (high - 1 + p) // s + 1)]
        return tuple(out)

    @staticmethod
    def _conv_on(
        conv: torch.nn.Conv2d, weights: tuple, t: Tensor, box: tuple[int, ...], padded: Tensor, out_box: tuple[int, ...]
    ) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """`conv` (with `weights`) on out_box, from its input `t` on `box` and the (padded) canvas's elsewhere;
        and the input it read (true values), with the place of out_box's first input cell in it."""
        (k, j), (s, u), (p, q) = conv.kernel_size, conv.stride, conv.padding
        height, width = padded.shape[2] - 2 * p, padded.shape[3] - 2 * q
        whole = (0, (height + 2 * p - k) // s + 1, 0, (width + 2 * q - j) // u + 1)  # every output cell
        if box == (0, height, 0, width) and out_box == whole:
            return F.conv2d(t, *weights, conv.stride, conv.padding), t, (0, 0)  # the whole plane: as the model runs
        y0, y1, x0, x1 = s * out_box[0], s * (out_box[1] - 1) + k, u * out_box[2], u * (out_box[3] - 1) + j
        window = padded[:, :, y0:y1, x0:x1].expand(len(t), -1, -1, -1).contiguous(memory_format=torch.channels_last)
        ScoreCAM._write(window, (y0 - p, x0 - q), t, box)
        return F.conv2d(window, *weights, conv.stride), window, (p, q)

    @staticmethod
    def _extended(t: Tensor, box: tuple[int, ...], base: Tensor, wanted: tuple[int, ...]) -> Tensor:
        """The activations on `wanted`: `t` on `box`, the canvas's elsewhere."""
        y0, y1, x0, x1 = wanted
        out = base[:, :, y0:y1, x0:x1].expand(len(t), -1, -1, -1).contiguous(memory_format=torch.channels_last)
        ScoreCAM._write(out, (y0, x0), t, box)
        return out

    @staticmethod
    def _write(out: Tensor, origin: tuple[int, int], t: Tensor, box: tuple[int, ...]) -> None:
        """Copy the part of `t` (on `box`) that falls in `out` (whose cell 0, 0 is at `origin`)."""
        (oy, ox), (h, w) = origin, out.shape[2:]
        y0, y1 = max(box[0], oy), min(box[1], oy + h)
        x0, x1 = max(box[2], ox), min(box[3], ox + w)
        if y0 < y1 and x0 < x1:
            part = t[:, :, y0 - box[0] : y1 - box[0], x0 - box[2] : x1 - box[2]]
            out[:, :, y0 - oy : y1 - oy, x0 - ox : x1 - ox] = part


OWN = (FullyConv, CAM, GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, ScoreCAM)
