"""Machine profiles: what calibration measured on one kind of machine, kept so that a policy (auto's
decisions) can be checked against cost structures one cannot run.

A profile is a folder of four JSON files in calibrate.py's own formats:

- ``target-curve.json``: the target's forward over k = 1..17 new tokens (``target.relative``: seconds
  over one step; ``target.median_s``: seconds);
- ``draft-prior.json``: the draft model's seconds per token (``draft.relative_to_target_step``),
  its greedy agreement with the target, and both models' costs on split threads
  (``draft.ahead``, calibrate.split_costs: what drafting ahead costs there);
- ``tolerance.json``: the near-tie tolerance measured for the target;
- ``info.json``: ``quickdraft info --json`` of that machine (a synthetic profile says what it models).

``quickdraft calibrate --profile DIR`` writes this machine's. The project keeps the profiles it
met in ``quickdraft/machine_profiles/`` (:func:`bundled_profiles`), with two synthetic extremes: a
memory-bound machine that verifies 16 rows for the price of one with a draft at 0.05 of a step
(as a GPU does), and a compute-bound one where every row costs a step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .calibrate import splits
from .control import Prior, Split, catch_up, curve_slope
from .errors import QuickdraftError

BUNDLED = Path(__file__).parent / "machine_profiles"
FILES = ("target-curve.json", "draft-prior.json", "tolerance.json", "info.json")


@dataclass(frozen=True)
class MachineProfile:
    """The costs of one machine (see the module docstring).

    relative: [17] the target's forward over n = 1..17 new tokens relative to one. step_s: seconds
    of one. draft_token: the draft model's seconds per token relative to a target step (None: no
    draft measured). agreement: the draft's greedy agreement with the target as measured there
    (None: not measured). draft_prefill: the draft's time per token of a long forward relative to
    one token (None: not measured; control.catch_up then prices it by the curve). ahead: the two
    models' costs on split threads (control.Split; empty: not measured). cpu: what the machine
    was. synthetic: a modelled machine, not a measured one.
    """

    name: str
    cpu: str
    relative: tuple[float, ...]
    step_s: float
    draft_token: float | None = None
    agreement: float | None = None
    draft_prefill: float | None = None
    synthetic: bool = False
    ahead: tuple[Split, ...] = ()

    def seconds(self, n: int) -> float:
        """Seconds of a target forward over n new tokens (beyond the curve: its slope, ``curve_slope``)."""
        curve = self.relative
        if n <= len(curve):
            return curve[n - 1] * self.step_s
        return (curve[-1] + curve_slope(curve) * (n - len(curve))) * self.step_s

    def draft_token_s(self) -> float:
        return (self.draft_token or 0.0) * self.step_s

    def catch_up_s(self, n: int) -> float:
        """Seconds of the draft model's forward over n new tokens (control.catch_up)."""
        return self.draft_token_s() * catch_up(n, lambda m: self.seconds(m) / self.step_s, self.draft_prefill)

    def prior(self, agreement: float | None = None) -> Prior:
        """What auto starts from on this machine; ``agreement``: the draft's agreement to assume
        (a property of the model pair more than of the machine), else the profile's own."""
        return Prior(list(self.relative), self.step_s, self.draft_token,
                     agreement if agreement is not None else self.agreement, self.draft_prefill, self.ahead)


def load_profile(folder: str | Path) -> MachineProfile:
    """Read a profile folder (the files above; ``draft-prior.json`` and ``tolerance.json`` optional)."""
    folder = Path(folder)
    try:
        curve = json.loads((folder / "target-curve.json").read_text())["target"]
        info = json.loads((folder / "info.json").read_text())
    except (OSError, ValueError, KeyError) as e:
        raise QuickdraftError(f"{folder} is not a machine profile (target-curve.json and info.json "
                              f"from `quickdraft calibrate --profile`): {e}") from None
    draft = {}
    if (folder / "draft-prior.json").is_file():
        draft = json.loads((folder / "draft-prior.json").read_text()).get("draft") or {}
    cpu = info.get("cpu", {})
    return MachineProfile(folder.name, cpu.get("model", "unknown"), tuple(curve["relative"]), curve["median_s"][0],
                          draft.get("relative_to_target_step"), draft.get("agreement"), draft.get("prefill_relative"),
                          bool(info.get("synthetic")), splits(draft))


def bundled_profiles(folder: Path = BUNDLED) -> list[MachineProfile]:
    """Every profile the project keeps, measured ones first, by name."""
    profiles = [load_profile(p) for p in sorted(folder.iterdir()) if (p / "target-curve.json").is_file()]
    return sorted(profiles, key=lambda p: (p.synthetic, p.name))


def write_profile(folder: str | Path, calibration: dict, info: dict, tolerance: dict | None = None) -> Path:
    """Write a profile folder from a calibration (calibrate.calibrate's result, its ``draft`` part
    with ``agreement``), ``quickdraft info --json`` and the tolerance file's content. Paths in
    ``info`` are left out (a profile is shared)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = {k: v for k, v in calibration.items() if k != "draft"}
    (folder / "target-curve.json").write_text(json.dumps(target, indent=1))
    step = {"context_tokens": calibration["context_tokens"],
            "target": {k: [v[0]] if isinstance(v, list) else v for k, v in calibration["target"].items()}}
    if calibration.get("draft"):
        (folder / "draft-prior.json").write_text(json.dumps({**step, "draft": calibration["draft"]}, indent=1))
    if tolerance is not None:
        (folder / "tolerance.json").write_text(json.dumps(tolerance, indent=1))
    shared = {k: v for k, v in info.items() if k not in ("cache", "calibration")}
    (folder / "info.json").write_text(json.dumps(shared, indent=1))
    return folder


def synthetic_calibration(relative: Sequence[float], step_s: float, draft_token: float, agreement: float) -> dict:
    """A calibration document for a modelled machine (the synthetic profiles)."""
    median = [r * step_s for r in relative]
    return {"context_tokens": 456,
            "target": {"k": list(range(1, len(relative) + 1)), "median_s": median, "min_s": median, "max_s": median,
                       "relative": list(relative)},
            "draft": {"token_s": draft_token * step_s, "relative_to_target_step": draft_token,
                      "agreement": agreement}}


@dataclass(frozen=True)
class Prediction:
    """What the cost model predicts for one source on a profile: its best draft length and speedup
    over plain decoding, at an assumed acceptance per token."""

    source: str
    accept: float
    k: int
    speedup: float


def predictions(profile: MachineProfile, agreement: dict[str, float] | None = None,
                copy_accept: Sequence[float] = (0.95, 0.7), max_k: int = 16) -> list[Prediction]:
    """Predicted speedups per source (control.best_rate, RISK included, every token accepted with
    the same probability): the draft model at its measured agreement (per kind of answer, or the
    profile's own), drafting in turn and, where the profile measured split threads, drafting ahead
    (control.ahead_gain: the best split and k; its speedup without RISK, as auto weighs it against
    drafting in turn), and a copying source (suffix, ngram: free to draft) at ``copy_accept``."""
    from .control import ahead_gain, best_rate

    forward = [profile.seconds(k + 1) for k in range(max_k + 1)]
    plain = 1.0 / forward[0]
    out = []
    kinds = agreement or ({"": profile.agreement} if profile.agreement is not None else {})
    if profile.draft_token is not None:
        for kind, a in kinds.items():
            k, rate = best_rate([a] * max_k, profile.draft_token_s(), forward)
            out.append(Prediction(f"draft model{f' ({kind})' if kind else ''}", a, k, rate / plain))
            split, k, gain = ahead_gain([a] * (max_k + 1), profile.draft_token, [f / forward[0] for f in forward],
                                        profile.ahead)
            if split is not None:
                _, in_turn = best_rate([a] * max_k, profile.draft_token_s(), forward, risk=0.0)
                out.append(Prediction(f"draft model ahead, {split.target_threads}+{split.draft_threads} threads"
                                      f"{f' ({kind})' if kind else ''}", a, k, gain * in_turn / plain))
    for a in copy_accept:
        k, rate = best_rate([a] * max_k, 0.0, forward)
        out.append(Prediction("copy (suffix, ngram)", a, k, rate / plain))
    return out
