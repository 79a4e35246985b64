"""Fixtures for the optimizers, schedules and gradient clipping (include/attnlens/train/,
docs/training.md). Oracle: torch.optim.SGD, torch.optim.AdamW (single-tensor path, the
default on CPU in PyTorch 1.13), torch.optim.lr_scheduler.OneCycleLR and LambdaLR, and
torch.nn.utils.clip_grad_norm_, each run in the file's dtype; the float64 runs are also checked
against the update rules written out below with torch operations, independently of torch.optim.

Parameters carry state_dict names of attnlens modules, so the two weight-decay groups of a case
are the ones attnlens's default rule (train/parameter_groups.hpp) must find; each case's
metadata lists the names without decay."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Dict, List, Tuple

import torch

from fixturelib import FixtureFiles, Tensors, assert_close, base_metadata, fixture, seed_of

F64 = torch.float64
DTYPES = {"f32": torch.float32, "f64": torch.float64}
STEPS = 10

# name, shape, kind (how the initial value is drawn), gradient scale
PARAMETERS: List[Tuple[str, Tuple[int, ...], str, float]] = [
    ("layers.0.self_attn.in_proj_weight", (6, 4), "weight", 1.0),
    ("layers.0.self_attn.in_proj_bias", (6,), "bias", 0.5),
    ("layers.0.norm1.weight", (4,), "norm", 0.1),
    ("cls_token", (1, 1, 4), "token", 2.0),
    ("head.weight", (3, 4), "weight", 1e-3),  # small gradients: eps and the moments' scale
]
# What train/parameter_groups.hpp's default_no_weight_decay() must leave out of PARAMETERS.
DEFAULT_NOT_DECAYED = ["layers.0.self_attn.in_proj_bias", "layers.0.norm1.weight", "cls_token"]


@dataclasses.dataclass(frozen=True)
class OptimCase:
    name: str
    optimizer: str  # "sgd" or "adamw"
    lr: float
    weight_decay: float = 0.0
    groups: str = "all"  # "all": every parameter decays; "default": DEFAULT_NOT_DECAYED do not
    momentum: float = 0.0  # sgd
    dampening: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9  # adamw
    beta2: float = 0.999
    eps: float = 1e-8
    amsgrad: bool = False
    schedule: str = "none"  # "none", "one_cycle" (lr and momentum / beta1), "warmup_cosine"
    max_lr: float = 0.0  # one_cycle
    warmup_steps: int = 0  # warmup_cosine: base lr = lr
    min_lr: float = 0.0


CASES = [
    OptimCase("sgd_plain", "sgd", lr=0.1),
    OptimCase("sgd_momentum", "sgd", lr=0.05, momentum=0.9),
    OptimCase("sgd_nesterov", "sgd", lr=0.05, momentum=0.9, nesterov=True),
    OptimCase("sgd_weight_decay", "sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
    OptimCase("sgd_dampening_groups", "sgd", lr=0.1, momentum=0.8, dampening=0.3,
              weight_decay=0.05, groups="default"),
    OptimCase("sgd_one_cycle", "sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, groups="default",
              schedule="one_cycle", max_lr=0.2),
    OptimCase("adamw_default", "adamw", lr=1e-3, weight_decay=1e-2),
    OptimCase("adamw_no_decay", "adamw", lr=1e-2, weight_decay=0.0),
    OptimCase("adamw_groups", "adamw", lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6,
              weight_decay=0.1, groups="default"),
    OptimCase("adamw_amsgrad", "adamw", lr=5e-3, weight_decay=0.05, amsgrad=True,
              groups="default"),
    OptimCase("adamw_warmup_cosine", "adamw", lr=1e-2, weight_decay=0.05, groups="default",
              schedule="warmup_cosine", warmup_steps=3, min_lr=1e-4),
    OptimCase("adamw_one_cycle", "adamw", lr=1e-2, weight_decay=0.01, groups="default",
              schedule="one_cycle", max_lr=1e-2),
]


def warmup_cosine(step: int, base_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """train/schedule.hpp's warmup_cosine_lr, written out."""
    if step < warmup:
        return base_lr * step / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2


def warmup_cosine_lambda(base_lr: float, min_lr: float, warmup: int, total: int):
    """The LambdaLR factor of the same schedule: lr(step) / base_lr."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        progress = min(1.0, (step - warmup) / (total - warmup)) if total > warmup else 1.0
        ratio = min_lr / base_lr
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def initial_parameters(case: OptimCase, g: torch.Generator) -> Dict[str, torch.Tensor]:
    values = {}
    for name, shape, kind, _ in PARAMETERS:
        noise = torch.randn(shape, generator=g, dtype=F64)
        values[name] = {"weight": 0.5 * noise, "bias": 0.3 * noise, "norm": 1 + 0.2 * noise,
                        "token": noise}[kind]
    return values


def gradients(g: torch.Generator) -> List[Dict[str, torch.Tensor]]:
    """STEPS synthetic gradients: N(0, 1) times the parameter's scale times a per-step factor
    in [0.2, 2], so the second moments also shrink at times (amsgrad keeps the maximum)."""
    steps = []
    for _ in range(STEPS):
        factor = 0.2 + 1.8 * torch.rand((), generator=g, dtype=F64)
        steps.append({name: scale * factor * torch.randn(shape, generator=g, dtype=F64)
                      for name, shape, _, scale in PARAMETERS})
    return steps


def not_decayed(case: OptimCase) -> List[str]:
    return DEFAULT_NOT_DECAYED if case.groups == "default" else []


def torch_run(case: OptimCase, init, grads, dtype):
    """torch.optim on leaves of `dtype`: the parameters after every step, the lr and momentum
    (or beta1) each step used, and the final state by parameter name."""
    params = {n: torch.nn.Parameter(v.to(dtype).clone()) for n, v in init.items()}
    excluded = set(not_decayed(case))
    decay = [p for n, p in params.items() if n not in excluded]
    no_decay = [p for n, p in params.items() if n in excluded]
    groups = [{"params": decay}] + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])
    if case.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=case.lr, momentum=case.momentum,
                              dampening=case.dampening, weight_decay=case.weight_decay,
                              nesterov=case.nesterov)
    else:
        opt = torch.optim.AdamW(groups, lr=case.lr, betas=(case.beta1, case.beta2), eps=case.eps,
                                weight_decay=case.weight_decay, amsgrad=case.amsgrad)
    scheduler = None
    if case.schedule == "one_cycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=case.max_lr, total_steps=STEPS)
    elif case.schedule == "warmup_cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine_lambda(case.lr, case.min_lr, case.warmup_steps, STEPS))
    after, lrs, momenta = [], [], []
    for k in range(STEPS):
        group = opt.param_groups[0]
        lrs.append(group["lr"])
        momenta.append(group["betas"][0] if case.optimizer == "adamw" else group["momentum"])
        for n, p in params.items():
            p.grad = grads[k][n].to(dtype).clone()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        after.append({n: p.detach().clone() for n, p in params.items()})
    state = {}
    for n, p in params.items():
        for buffer, value in opt.state[p].items():
            if buffer != "step" and value is not None:  # SGD without momentum: None
                state[f"{n}.{buffer}"] = value.detach().clone()
    return after, lrs, momenta, state


def manual_run(case: OptimCase, init, grads, lrs, momenta):
    """The update rules of docs/training.md in float64 torch operations, not torch.optim."""
    p = {n: v.clone() for n, v in init.items()}
    buf, m, v, v_max = {}, {}, {}, {}
    excluded = set(not_decayed(case))
    after = []
    for k in range(STEPS):
        lr, mu, t = lrs[k], momenta[k], k + 1
        for n in p:
            wd = 0.0 if n in excluded else case.weight_decay
            g = grads[k][n]
            if case.optimizer == "sgd":
                d = g + wd * p[n]
                if mu != 0:
                    buf[n] = d.clone() if k == 0 else mu * buf[n] + (1 - case.dampening) * d
                    d = d + mu * buf[n] if case.nesterov else buf[n]
                p[n] = p[n] - lr * d
            else:
                p[n] = p[n] * (1 - lr * wd)
                m[n] = mu * m.get(n, torch.zeros_like(g)) + (1 - mu) * g
                v[n] = case.beta2 * v.get(n, torch.zeros_like(g)) + (1 - case.beta2) * g * g
                second = v[n]
                if case.amsgrad:
                    v_max[n] = torch.maximum(v_max.get(n, torch.zeros_like(g)), v[n])
                    second = v_max[n]
                denom = second.sqrt() / math.sqrt(1 - case.beta2 ** t) + case.eps
                p[n] = p[n] - lr / (1 - mu ** t) * m[n] / denom
        after.append({n: x.clone() for n, x in p.items()})
    return after


def optim_file(dtype_key: str) -> Tuple[Tensors, Dict[str, str]]:
    dtype = DTYPES[dtype_key]
    t: Tensors = {}
    case_list = []
    for case in CASES:
        g = torch.Generator().manual_seed(seed_of(f"optim_{case.name}"))
        init = initial_parameters(case, g)
        grads = gradients(g)
        after, lrs, momenta, state = torch_run(case, init, grads, dtype)
        if dtype == F64:
            expected = manual_run(case, init, grads, lrs, momenta)
            for k in range(STEPS):
                for n in init:
                    assert_close(after[k][n], expected[k][n], f"{case.name} step {k} {n}")
        if case.amsgrad:  # the maximum must have mattered
            plain = dataclasses.replace(case, amsgrad=False)
            other = torch_run(plain, init, grads, dtype)[0][-1]
            assert any((other[n] - after[-1][n]).abs().max() > 1e-6 for n in init), case.name
        for n in init:
            t[f"{case.name}.{n}"] = init[n].to(dtype)
        for k in range(STEPS):
            for n in init:
                t[f"{case.name}.grad.{k}.{n}"] = grads[k][n].to(dtype)
                t[f"{case.name}.param.{k}.{n}"] = after[k][n]
        for name, value in state.items():
            t[f"{case.name}.state.{name}"] = value
        t[f"{case.name}.lr"] = torch.tensor(lrs, dtype=F64)
        t[f"{case.name}.momentum"] = torch.tensor(momenta, dtype=F64)
        entry = dataclasses.asdict(case)
        entry.update({"steps": STEPS, "not_decayed": not_decayed(case),
                      "parameters": [n for n, *_ in PARAMETERS]})
        case_list.append(entry)
    metadata = base_metadata()
    metadata["cases"] = json.dumps(case_list, sort_keys=True, separators=(",", ":"))
    return t, metadata


@fixture("optim")
def optim_fixture() -> FixtureFiles:
    return {f"optim_{key}.safetensors": optim_file(key) for key in DTYPES}


# ----------------------------------------------------------------------------------------------
# Schedules (optim_schedules.safetensors, float64)


@dataclasses.dataclass(frozen=True)
class WarmupCosineCase:
    name: str
    base_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    kind: str = "warmup_cosine"


@dataclasses.dataclass(frozen=True)
class OneCycleCase:
    name: str
    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    kind: str = "one_cycle"


SCHEDULE_CASES = [
    WarmupCosineCase("warmup_cosine", 1e-3, 1e-5, 5, 30),
    WarmupCosineCase("cosine_no_warmup", 0.1, 0.0, 0, 20),
    WarmupCosineCase("warmup_only", 0.01, 1e-3, 10, 10),
    OneCycleCase("one_cycle_default", 0.1, 100),
    OneCycleCase("one_cycle_options", 1e-3, 37, pct_start=0.25, div_factor=10.0,
                 final_div_factor=100.0, base_momentum=0.8, max_momentum=0.9),
    OneCycleCase("one_cycle_three_phase", 0.05, 50, three_phase=True),
    OneCycleCase("one_cycle_linear", 0.02, 23, anneal_strategy="linear"),
    OneCycleCase("one_cycle_linear_three_phase", 0.02, 41, pct_start=0.4,
                 anneal_strategy="linear", three_phase=True),
    OneCycleCase("one_cycle_pct_0", 0.3, 12, pct_start=0.0),
]

EXTRA_STEPS = 5  # warm-up + cosine is also stored past total_steps, where it stays at min_lr


def schedule_values(case):
    """lr (and momentum) of every step as the PyTorch scheduler sets them: the value before
    the first scheduler.step(), then after each. OneCycleLR is stored through step total_steps
    (it raises after); warm-up + cosine EXTRA_STEPS past it."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=F64))
    if case.kind == "warmup_cosine":
        opt = torch.optim.SGD([param], lr=case.base_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine_lambda(case.base_lr, case.min_lr, case.warmup_steps,
                                      case.total_steps))
        count = case.total_steps + EXTRA_STEPS
    else:
        opt = torch.optim.SGD([param], lr=case.max_lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=case.max_lr, total_steps=case.total_steps, pct_start=case.pct_start,
            anneal_strategy=case.anneal_strategy, cycle_momentum=True,
            base_momentum=case.base_momentum, max_momentum=case.max_momentum,
            div_factor=case.div_factor, final_div_factor=case.final_div_factor,
            three_phase=case.three_phase)
        count = case.total_steps + 1
        # The same schedule on AdamW cycles betas[0] through the same values.
        adam = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1, dtype=F64))], lr=case.max_lr)
        adam_scheduler = torch.optim.lr_scheduler.OneCycleLR(
            adam, max_lr=case.max_lr, total_steps=case.total_steps, pct_start=case.pct_start,
            anneal_strategy=case.anneal_strategy, base_momentum=case.base_momentum,
            max_momentum=case.max_momentum, div_factor=case.div_factor,
            final_div_factor=case.final_div_factor, three_phase=case.three_phase)
    lrs, momenta = [], []
    for step in range(count):
        if step > 0:
            opt.step()  # no gradient: no update; keeps the scheduler's order warning away
            scheduler.step()
            if case.kind == "one_cycle":
                adam.step()
                adam_scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
        if case.kind == "one_cycle":
            momenta.append(opt.param_groups[0]["momentum"])
            assert adam.param_groups[0]["lr"] == lrs[-1], case.name
            assert adam.param_groups[0]["betas"][0] == momenta[-1], case.name
        else:
            direct = warmup_cosine(step, case.base_lr, case.min_lr, case.warmup_steps,
                                   case.total_steps)
            assert abs(direct - lrs[-1]) <= 1e-15 * max(1.0, case.base_lr), (case.name, step)
    return lrs, momenta


@fixture("optim_schedules")
def optim_schedules_fixture() -> FixtureFiles:
    t: Tensors = {}
    for case in SCHEDULE_CASES:
        lrs, momenta = schedule_values(case)
        t[f"{case.name}.lr"] = torch.tensor(lrs, dtype=F64)
        if momenta:
            t[f"{case.name}.momentum"] = torch.tensor(momenta, dtype=F64)
    metadata = base_metadata()
    metadata["cases"] = json.dumps([dataclasses.asdict(c) for c in SCHEDULE_CASES],
                                   sort_keys=True, separators=(",", ":"))
    return {"optim_schedules.safetensors": (t, metadata)}


# ----------------------------------------------------------------------------------------------
# Gradient clipping (optim_clip_{f32,f64}.safetensors)


@dataclasses.dataclass(frozen=True)
class ClipCase:
    name: str
    max_norm: float


CLIP_CASES = [
    ClipCase("clip", 1.0),  # total norm about 9: scaled
    ClipCase("no_clip", 100.0),  # not scaled
    ClipCase("zero", 0.0),  # every gradient 0
]


def clip_file(dtype_key: str) -> Tuple[Tensors, Dict[str, str]]:
    dtype = DTYPES[dtype_key]
    t: Tensors = {}
    cases = []
    for case in CLIP_CASES:
        g = torch.Generator().manual_seed(seed_of(f"optim_clip_{case.name}"))
        params = {}
        for name, shape, _, scale in PARAMETERS:
            p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
            p.grad = (scale * torch.randn(shape, generator=g, dtype=F64)).to(dtype)
            t[f"{case.name}.grad.{name}"] = p.grad.clone()
            params[name] = p
        total = torch.nn.utils.clip_grad_norm_(list(params.values()), case.max_norm)
        t[f"{case.name}.total_norm"] = total.detach().clone()
        for name, p in params.items():
            t[f"{case.name}.clipped.{name}"] = p.grad.clone()
        entry = dataclasses.asdict(case)
        entry["parameters"] = [n for n, *_ in PARAMETERS]
        cases.append(entry)
    metadata = base_metadata()
    metadata["cases"] = json.dumps(cases, sort_keys=True, separators=(",", ":"))
    return t, metadata


@fixture("optim_clip")
def optim_clip_fixture() -> FixtureFiles:
    return {f"optim_clip_{key}.safetensors": clip_file(key) for key in DTYPES}
