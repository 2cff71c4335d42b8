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

from cnnlab.models.boxed import boxed_runner
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
        """plain_runner's (run, black) with passes that compute only where the images differ from the black
        canvas (cnnlab.models.boxed); None for a model that is not cnnlab's ResNet in eval mode without hooks."""
        return boxed_runner(self.model, canvas)


OWN = (FullyConv, CAM, GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, ScoreCAM)
