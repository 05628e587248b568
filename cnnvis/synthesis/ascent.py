"""The one optimisation loop: a batch of parameterised images climbs its objectives.

The image optimised is exactly the size fed to the network (no hidden upsampling); the random
affine transform keeps that size.

Many filters run as one batch: element ``i`` drives its own target. Each element has its own
random generators seeded from ``(seed, layer, filter)``, so an image does not depend on which
other filters share its batch (up to floating-point differences between batch sizes).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from cnnvis.synthesis.maco import MacoImage, random_crops
from cnnvis.synthesis.params import FourierImage, PixelImage, random_affine
from cnnvis.core.memory import images_per_batch
from cnnvis.core.progress import Progress
from cnnvis.model.hooks import frozen, record
from cnnvis.model.loading import load_model
from cnnvis.synthesis.objectives import Objective, OUTPUT
from cnnvis.model.probing import call_model, select_output
from cnnvis.synthesis.settings import Settings, image_size, unit_seed


#: Natural crops tried on a unit that stays dead after its fresh starts (``natural_start``).
NATURAL_STARTS = 48


def natural_start(evaluate, objective: Objective, rows: Sequence[int], size, channels: int, device, tries: int = 3):
    """For each dead element in ``rows``: the natural crops (of the photographs scikit-image and
    scikit-learn ship) that its objective answers to most, best first, at most ``tries`` and only
    those it answers to at all; ``{row: [image, …]}``."""
    try:
        from cnnvis.synthesis.quality import natural_crops

        crops = natural_crops(tuple(size), channels, NATURAL_STARTS, seed=0).to(device)
    except Exception:  # the photographs are not installed: nothing more to try
        return {}
    found = {}
    step = images_per_batch(tuple(size))  # 48 crops at 224 px at once held 0.9 GB; a few at a time
    for row in rows:
        if objective.select([row]) is None:
            continue
        with torch.no_grad():
            values = torch.cat([evaluate(crops[k : k + step], objective.select([row] * len(crops[k : k + step])))
                                for k in range(0, len(crops), step)])
        order = [int(k) for k in values.argsort(descending=True)[:tries] if float(values[k]) > 0]
        if order:
            found[row] = [crops[k] for k in order]
    return found


@dataclass(frozen=True)
class Synthesis:
    """One optimised image and what happened to it.

    ``status``: ``ok``; ``dead`` (the objective and its gradient were exactly zero for the
    starting image, also after ``attempts - 1`` fresh starts: the image is that start); ``flat``
    (the unit's response does not vary: a negligible kernel, or a channel that is never active
    over natural crops; the image means nothing, see :func:`cnnvis.synthesis.health.unit_health`); ``nonfinite`` (NaN or inf appeared at
    ``stopped_at``; the image is the last finite one). ``reason`` says why, in words.
    ``curve``: the objective at every step (under the random transforms, for robust and maco).
    """

    image: torch.Tensor
    objective_initial: float
    objective_final: float
    curve: Tuple[float, ...]
    status: str = "ok"
    attempts: int = 1
    stopped_at: Optional[int] = None
    seed: int = 0
    reason: Optional[str] = None
    stop_reason: Optional[str] = None  # "plateau" (early stop), "nonfinite"; None: ran every step
    natural_start: bool = False  # started from a natural crop because fresh noise left it dead
    unit_kind: Optional[str] = None  # live, off or flat (cnnvis.synthesis.health), once judged
    unit_note: Optional[str] = None  # why an off-unit is one

    @property
    def dead(self) -> bool:
        return self.status == "dead"


@contextlib.contextmanager
def channels_last(model: torch.nn.Module, enabled: bool = True):
    """Store the model's 4-D weights channels-last while open; the original tensors come back after.

    Each weight's ``.data`` is swapped for a channels-last copy and the very same original tensor
    (same storage, so a weight that aliases a numpy array or another tensor keeps aliasing it)
    is put back on exit, also after an error.
    """
    changed = []
    try:
        if enabled:
            for t in list(model.parameters()) + list(model.buffers()):
                if t.ndim == 4 and t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last):
                    original = t.data
                    t.data = original.contiguous(memory_format=torch.channels_last)
                    changed.append((t, original))
        yield bool(changed)
    finally:
        for t, original in changed:
            t.data = original


#: The plateau rule of ``early_stop``: a picture stops at step t when the mean of its objective over
#: the last ``window`` steps is less than ``rise`` (relative) above the mean of the ``window`` steps
#: before, with ``window = max(16, steps // 8)`` and ``rise = 0.01``; never before step 2 * window.
PLATEAU_RISE = 0.01


def plateau_window(steps: int) -> int:
    """The window of the plateau rule for a run of ``steps`` steps."""
    return max(16, steps // 8)


def plateaued(curve: Sequence[float], window: int, rise: float = PLATEAU_RISE) -> bool:
    """Whether ``curve`` has stopped rising by the plateau rule (see :data:`PLATEAU_RISE`).

    Example:
        >>> plateaued([float(i) for i in range(64)], 16), plateaued([1.0] * 32 + [1.001] * 32, 16)
        (False, True)
    """
    if len(curve) < 2 * window:
        return False
    last = sum(curve[-window:]) / window
    before = sum(curve[-2 * window : -window]) / window
    return last - before <= rise * max(abs(before), 1e-12)


@contextlib.contextmanager
def affine_batchnorm(model: torch.nn.Module, enabled: bool = True):
    """While open, every ``nn.BatchNorm2d`` in eval mode computes ``x * scale + shift`` (the same
    numbers up to rounding) instead of the general batch-norm kernel, whose backward pass costs about
    twice as much on a CPU (see docs/performance.md). The modules' own ``forward`` comes back after;
    their parameters and buffers are not touched.
    """
    patched = []
    try:
        if enabled:
            for m in model.modules():
                if type(m) is torch.nn.BatchNorm2d and not m.training and m.track_running_stats \
                        and m.running_mean is not None and "forward" not in vars(m):
                    with torch.no_grad():
                        scale = torch.rsqrt(m.running_var + m.eps)
                        if m.weight is not None:
                            scale = scale * m.weight
                        shift = -m.running_mean * scale
                        if m.bias is not None:
                            shift = shift + m.bias
                    scale, shift = scale.detach().view(1, -1, 1, 1), shift.detach().view(1, -1, 1, 1)
                    m.forward = (lambda x, scale=scale, shift=shift: torch.addcmul(shift, x, scale))
                    patched.append(m)
        yield bool(patched)
    finally:
        for m in patched:
            del m.forward


def _generators(seeds: Sequence[int], stream: str, attempt: int = 0) -> List[torch.Generator]:
    return [torch.Generator().manual_seed(unit_seed(s, stream, attempt)) for s in seeds]


class _Ascent:
    """One batched optimisation: element ``i`` maximises ``objective``'s value ``i`` from ``seeds[i]``.

    The one loop of cnnvis: :func:`synthesize` (units, classes, composed objectives) and the techniques
    on a photograph (:mod:`cnnvis.synthesis.techniques`) all climb here, with the same steps, early stop,
    dead-start handling and records. What differs is handed in:

    * ``param``: the parameterisation (default: the one ``settings.param`` names, from noise); a
      technique hands in one that starts at its photo (:func:`cnnvis.synthesis.photos.photo_param`);
    * ``pose(step) -> (transform, objective)``: the technique's own transform of this step and the
      objective that goes with it (the same pose applied to the photo's targets); default: the random
      affine transforms and crops of ``settings``, with ``objective``;
    * ``move(g)``: the plain ascent's step from ``g``, the gradient of ``-L`` (default: ``lr * g``, with
      ``g`` divided by its RMS per image when ``settings.normalize_grad``; DeepDream's is
      ``lr * g / mean|g|``).

    :meth:`start` draws the starting images and restarts dead elements (``settings.retries``);
    :meth:`step` takes one step for every active element; :meth:`results` reports them; :meth:`run`
    does all three.
    """

    def __init__(self, lm, objective: Objective, seeds: Sequence[int], settings: Settings, evaluate, *,
                 param=None, pose: Optional[Callable[[int], Tuple[Callable, Objective]]] = None,
                 move: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.lm, self.objective, self.seeds, self.settings = lm, objective, list(seeds), settings
        self.evaluate = evaluate
        self.pose, self.move = pose, move
        self.b = len(self.seeds)
        if param is None:
            param_cls = {"fourier": FourierImage, "maco": MacoImage}.get(settings.param, PixelImage)
            size = image_size(lm, settings)
            param = param_cls(_generators(self.seeds, "init"), lm.preprocessing.channels, size, lm.device, settings)
        self.param = param
        self.attempts = [1] * self.b
        self.natural = [False] * self.b  # started from a natural crop (after fresh noise failed)
        self.status = ["ok"] * self.b
        self.stopped_at: List[Optional[int]] = [None] * self.b
        self.stop_reasons: List[Optional[str]] = [None] * self.b
        self.curves: List[List[float]] = [[] for _ in range(self.b)]
        self.moves = _generators(self.seeds, "transform")
        self.opt = torch.optim.Adam(self.param.params, lr=settings.lr) if settings.optimizer == "adam" else None
        self.previous = None
        self.initial = torch.zeros(self.b)
        self.active = torch.ones(self.b, dtype=torch.bool)

    def run(self, progress: Progress = None) -> List[Synthesis]:
        """Start, climb ``settings.steps`` steps (fewer when every element has stopped), report.
        ``progress(done, steps)`` after each step, and ``(steps, steps)`` once when it stopped early."""
        steps, done = self.settings.steps, 0
        self.start()
        for step in range(steps):
            if not bool(self.active.any()):
                break
            self.step(step)
            done = step + 1
            if progress is not None:
                progress(done, steps)
        if progress is not None and done < steps:  # stopped early: the rest counts as done
            progress(steps, steps)
        return self.results()

    def start(self) -> None:
        """Evaluate the starting images; restart elements that are dead (zero gradient: nothing to climb):
        ``settings.retries`` times from fresh, stronger noise, then (with retries) from the natural
        crops the unit answers to most (so a unit that answers to a photograph is not reported dead)."""
        b, device = self.b, self.lm.device
        candidates: Optional[dict] = None  # natural crops, looked for once
        while True:
            start = self.param.image().detach().requires_grad_(True)
            initial = self.evaluate(start, self.objective.reported)
            (grad,) = torch.autograd.grad(initial.sum(), start, allow_unused=True)
            flat = torch.zeros(b, device=device) if grad is None else grad.flatten(1).abs().amax(1)
            dead = flat == 0  # nothing to climb: no gradient (a unit that reads a channel silent for this start)
            noise = [i for i in range(b) if dead[i] and self.attempts[i] <= self.settings.retries]
            spent = [i for i in range(b) if dead[i] and self.attempts[i] > self.settings.retries > 0]
            if spent and candidates is None and hasattr(self.param, "set_image"):
                candidates = natural_start(self.evaluate, self.objective.reported, spent,
                                           image_size(self.lm, self.settings), self.lm.preprocessing.channels, device)
            natural = [i for i in spent if (candidates or {}).get(i)]
            if not noise and not natural:
                break
            for i in noise:
                (g,) = _generators([self.seeds[i]], "init", self.attempts[i])
                self.param.restart(i, g, self.attempts[i])
                self.attempts[i] += 1
            for i in natural:
                self.param.set_image(i, candidates[i].pop(0))
                self.natural[i] = True
                self.attempts[i] += 1
        self.initial = initial.detach()
        self.status = ["dead" if dead[i] else "ok" for i in range(b)]
        self.active = ~dead

    def _values(self, images: torch.Tensor, rows: List[int], step: int) -> torch.Tensor:
        """The objective of the elements ``rows`` (under this step's random transforms), whole batch long;
        only those rows go through the model when the objective can be restricted to them."""
        settings = self.settings
        if self.pose is not None:  # a technique's own pose of this step, and its objective
            transform, objective = self.pose(step)
            return self.evaluate(transform(images), objective)
        objective = self.objective.select(rows) if len(rows) < self.b else self.objective
        if objective is None:
            objective, rows = self.objective, list(range(self.b))
        images = images[rows] if len(rows) < self.b else images
        moves = [self.moves[r] for r in rows]
        if settings.transforms:
            images = random_affine(images, moves, settings)
        if settings.crops > 0:
            crops = random_crops(images, moves, crops=settings.crops, scale=settings.crop_scale,
                                 noise=settings.noise)  # element-major: row i * crops + k
            values = torch.stack([self.evaluate(crops[k :: settings.crops], objective)
                                  for k in range(settings.crops)]).mean(0)
        else:
            values = self.evaluate(images, objective)
        if len(rows) == self.b:
            return values
        full = torch.zeros(self.b, dtype=values.dtype, device=values.device)
        return full.index_put((torch.as_tensor(rows, device=values.device),), values)

    def step(self, step: int) -> None:
        """One step for every active element; an element whose value or gradient is not finite stops
        there and goes back to its last finite image; one whose objective has reached a plateau
        (``settings.early_stop``) stops there."""
        settings, param, active = self.settings, self.param, self.active
        before = [p.detach().clone() for p in param.params]
        # On a CPU only the active rows go through the model (a stopped picture costs nothing); on a
        # GPU the batch keeps its shape (a smaller batch saves little there, and every new shape costs
        # the GPU new kernel plans and allocations): stopped rows are computed and left unchanged.
        on_cpu = getattr(self.lm.device, "type", "cpu") == "cpu"
        values = self._values(param.image(), [i for i in range(self.b) if active[i] or not on_cpu], step)
        v = values.detach()
        bad = active & ~torch.isfinite(v)
        grads = torch.autograd.grad(-torch.where(active & ~bad, values, torch.zeros_like(values)).sum(), param.params)
        bad |= active & ~torch.stack([torch.isfinite(g.flatten(1)).all(1) for g in grads]).all(0)
        converged = torch.zeros_like(bad)
        window = plateau_window(settings.steps)
        for i in range(self.b):
            if bad[i]:
                self.status[i], self.stopped_at[i] = "nonfinite", step
            elif active[i]:
                self.curves[i].append(float(v[i]))
                if settings.early_stop and step + 1 < settings.steps and plateaued(self.curves[i], window):
                    converged[i] = True
                    self.stopped_at[i], self.stop_reasons[i] = step + 1, "plateau"
        self.active = active = active & ~bad
        keep = (~active).view(-1, *([1] * (before[0].ndim - 1)))
        with torch.no_grad():
            grads = [torch.where(keep, torch.zeros_like(g), g) for g in grads]
            if self.opt is None:
                for p, g in zip(param.params, grads):
                    if self.move is not None:
                        p -= self.move(g)
                        continue
                    if settings.normalize_grad:
                        g = g / (g.pow(2).flatten(1).mean(1).sqrt().view_as(keep.float()) + 1e-8)
                    p -= settings.lr * g  # g is the gradient of -L: this is x + lr * grad L
            else:
                for p, g in zip(param.params, grads):
                    p.grad = g
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            param.after_step()
            for p, old in zip(param.params, before):  # stopped elements do not move (Adam's momentum)
                p.copy_(torch.where(keep, old, p))
            if self.previous is not None and bool(bad.any()):  # back to the last step that gave finite values
                went = bad.view_as(keep)
                for p, old in zip(param.params, self.previous):
                    p.copy_(torch.where(went, old, p))
        self.previous = before
        self.active = self.active & ~converged  # a converged element took this step, then stops

    def results(self) -> List[Synthesis]:
        with torch.no_grad():
            final_images = self.param.image().detach().clone()
            final = self.evaluate(final_images, self.objective.reported)
        reasons = {
            "dead": lambda i: (f"its {'objective and ' if float(self.initial[i]) == 0 else ''}gradient "
                               f"{'are' if float(self.initial[i]) == 0 else 'is'} exactly zero for the starting image"
                               f"{f' and {self.attempts[i] - 1} fresh start(s)' if self.attempts[i] > 1 else ''}"
                               f"{', and for the natural crops it answers to most' if self.natural[i] else ''}"),
            "nonfinite": lambda i: f"NaN or inf appeared at step {self.stopped_at[i]}",
        }
        return [
            Synthesis(
                image=final_images[i].cpu(),
                objective_initial=float(self.initial[i]),
                objective_final=float(final[i]),
                curve=tuple(self.curves[i]),
                status=self.status[i],
                attempts=self.attempts[i],
                stopped_at=self.stopped_at[i],
                seed=int(self.seeds[i]),
                reason=reasons[self.status[i]](i) if self.status[i] in reasons else None,
                stop_reason="nonfinite" if self.status[i] == "nonfinite" else self.stop_reasons[i],
                natural_start=self.natural[i],
            )
            for i in range(self.b)
        ]


def synthesize(
    lm,
    objective: Objective,
    seeds: Sequence[int],
    settings: Settings,
    *,
    progress: Progress = None,
) -> List[Synthesis]:
    """Optimise one image per seed for ``objective`` (element ``i`` uses ``seeds[i]``).

    ``lm`` is a spec, an ``nn.Module`` or a ``LoadedModel``. The forward pass stops right after the
    last layer the objective reads; the model's weights get no gradients (``requires_grad`` off,
    eval mode; both restored after, also on an error) and no hook is left behind.
    ``progress(step, steps)`` after every step.
    """
    lm = load_model(lm)
    model, pre = lm.model, lm.preprocessing
    layers = [l for l in objective.layers if l != OUTPUT]
    wants_output = OUTPUT in objective.layers
    use_cl = settings.channels_last and pre.channels > 1
    with frozen(model), channels_last(model, use_cl), affine_batchnorm(model), \
            record(model, layers, stop=not wants_output) as rec:

        def run(x):
            return rec.run(x.contiguous(memory_format=torch.channels_last) if use_cl else x)

        def evaluate(images, which: Objective = objective):
            out = call_model(lm, images, run)
            outputs = dict(rec.outputs)
            if wants_output:
                outputs[OUTPUT] = select_output(out, lm.name)[0]
            return which(outputs).reshape(images.shape[0])

        return _Ascent(lm, objective, seeds, settings, evaluate).run(progress)
