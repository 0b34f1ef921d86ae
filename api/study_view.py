"""What the API shows of a study: pure functions of its row, its summary and its Optuna trials.

Trials carry the user attributes the workers write (docs/DESIGN.md): ``source``, ``ppl``,
``kl``, ``keep_ratio``, ``predicted``, ``config``, ... Nothing here touches the database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from api.schemas import GroupMember, LayerProfile, Point, Progress, SetupProgress, TrialCounts, TrialPublic
from search.trial_digest import TrialDigest, digest, number
from storage import Study, StudyStatus

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

ProfileSource = Literal["meta.layer_keep", "derived", "none"]

# "model.layers.3.self_attn.q_proj" -> block 3, type "self_attn.q_proj" (and BERT's layer.N, GPT's h.N).
_BLOCK_NAME = re.compile(r"^(?:.*\.)?(?:layers|layer|h|blocks)\.(?P<block>\d+)\.(?P<type>.+)$")


def integer(value: Any) -> int | None:
    as_float = number(value)
    return int(as_float) if as_float is not None else None


def text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def utc(moment: datetime | None) -> datetime | None:
    """Optuna's naive local times as UTC, so the JSON carries an offset (RFC 3339, as the schema says)."""
    return moment.astimezone(UTC) if moment is not None else None


def trial_public(trial: FrozenTrial) -> TrialPublic:
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialPublic(
        number=trial.number, state=trial.state.name.lower(),
        value=number(trial.value) if trial.state.name == "COMPLETE" else None,
        ppl=number(attrs.get("ppl")), kl=number(attrs.get("kl")), keep_ratio=number(attrs.get("keep_ratio")),
        source=text(attrs.get("source")), predicted=number(attrs.get("predicted")), duration_s=duration,
        worker=text(attrs.get("worker")), params_kept=integer(attrs.get("params_kept")),
        bytes=integer(attrs.get("bytes")), n_tokens=integer(attrs.get("n_tokens")),
        datetime_start=utc(trial.datetime_start), datetime_complete=utc(trial.datetime_complete),
    )


def counts(seen: TrialDigest) -> TrialCounts:
    return TrialCounts(**seen.counts)


def point(trial: FrozenTrial) -> Point:
    attrs = trial.user_attrs
    return Point(trial=trial.number, value=number(trial.value), ppl=number(attrs.get("ppl")),
                 kl=number(attrs.get("kl")), keep_ratio=number(attrs.get("keep_ratio")),
                 source=text(attrs.get("source")))


def summary_point(raw: Any) -> Point | None:
    if not isinstance(raw, dict):
        return None
    return Point(trial=integer(raw.get("trial")), value=number(raw.get("value")), ppl=number(raw.get("ppl")),
                 kl=number(raw.get("kl")), keep_ratio=number(raw.get("keep_ratio")),
                 source=text(raw.get("source")))


def best_trial(study: Study, trials: Sequence[FrozenTrial],
               seen: TrialDigest | None = None) -> FrozenTrial | None:
    """The winner: the summary's ``best`` once the study has completed, else the lowest objective so far."""
    final = (study.summary or {}).get("best")
    if study.status is StudyStatus.COMPLETED and isinstance(final, dict):
        wanted = integer(final.get("trial"))
        for trial in trials:
            if trial.number == wanted and trial.state.name == "COMPLETE":
                return trial
    return (seen or digest(trials)).best


def best_point(study: Study, trials: Sequence[FrozenTrial], seen: TrialDigest) -> Point | None:
    trial = best_trial(study, trials, seen)
    if trial is not None:
        return point(trial)
    return summary_point((study.summary or {}).get("best"))


def baselines(study: Study, seen: TrialDigest) -> dict[str, Point]:
    """Baselines measured so far (trials with source ``baseline:NAME``), then the summary's over them."""
    found = {name: point(trial) for name, trial in seen.baselines.items()}
    written = (study.summary or {}).get("baselines")
    if isinstance(written, dict):
        for name, raw in written.items():
            parsed = summary_point(raw)
            if parsed is not None:
                parsed.source = parsed.source or f"baseline:{name}"
                found[str(name)] = parsed
    return found


def progress(study: Study, seen: TrialDigest) -> Progress:
    """Done = complete + pruned; ETA = mean completed-trial duration x remaining / active workers."""
    done = seen.counts["n_complete"] + seen.counts["n_pruned"]
    remaining = max(study.spec["n_trials"] - done, 0)
    mean_s, active = seen.mean_trial_s, seen.active_workers
    eta: float | None
    if study.status is StudyStatus.COMPLETED or remaining == 0:
        eta = 0.0
    elif study.status.is_finished():
        eta = None
    elif mean_s is not None and active > 0:
        eta = mean_s * remaining / active
    else:  # nothing measured yet, or nobody is working on it right now
        eta = number((study.summary or {}).get("eta_s"))
    return Progress(done=done, total=study.spec["n_trials"], fraction=min(done / max(study.spec["n_trials"], 1), 1.0),
                    mean_trial_s=mean_s, active_workers=active, eta_s=eta)


def setup_progress(study: Study) -> SetupProgress | None:
    """The summary's ``setup`` record (``common.progress.ThrottledRecord``); None without a sound one."""
    raw = (study.summary or {}).get("setup")
    if not isinstance(raw, dict):
        return None
    done, total, seconds = integer(raw.get("done")), integer(raw.get("total")), number(raw.get("seconds"))
    if done is None or total is None or seconds is None or not 0 <= done <= total:
        return None
    return SetupProgress(step=text(raw.get("step")), done=done, total=total, fraction=done / total if total else 0.0,
                         seconds=seconds, finished=raw.get("finished") is True)


def member_budget(study: Study) -> float:
    """A group member's budget in the group's unit (its spec has exactly one of the two)."""
    budget = study.spec.get("budget")
    return float(budget if budget is not None else study.spec["budget_bits"])


def group_member(study: Study, trials: Sequence[FrozenTrial] | None = None, seen: TrialDigest | None = None,
                 *, has_checkpoint: bool = False) -> GroupMember:
    """One budget of a group; without its trials (a group just created) only its budget and status."""
    member = GroupMember(budget=member_budget(study), study_id=study.id, status=study.status.value,
                         has_checkpoint=has_checkpoint)
    if trials is not None and seen is not None:
        holdout = (study.summary or {}).get("holdout")
        member.progress = progress(study, seen)
        member.best = best_point(study, trials, seen)
        member.holdout = holdout if isinstance(holdout, dict) else None
    return member


def group_status(statuses: Sequence[StudyStatus]) -> str:
    """One status for a group's members (``StudyGroupPublic.status``)."""
    if len(set(statuses)) == 1:
        return statuses[0].value
    if not all(state.is_finished() for state in statuses):
        return StudyStatus.RUNNING.value
    return (StudyStatus.FAILED if StudyStatus.FAILED in statuses else StudyStatus.CANCELLED).value


def summary_rest(study: Study) -> dict[str, Any]:
    """The summary without the parts the detail shows on their own."""
    return {key: value for key, value in (study.summary or {}).items()
            if key not in ("best", "baselines", "predictor", "holdout", "setup")}


def _derived_keep(entry: Any, shape: Any) -> float | None:
    """Kept parameter fraction of one layer from its config entry; None where shapes would be needed."""
    if not isinstance(entry, dict):
        return None
    keep = 1.0
    lowrank, sparsity = entry.get("lowrank"), entry.get("sparsity")
    if isinstance(lowrank, dict):
        rank = integer(lowrank.get("rank"))
        if rank is None or not (isinstance(shape, list | tuple) and len(shape) == 2):
            return None
        out_f, in_f = (integer(v) for v in shape)
        if not out_f or not in_f:
            return None
        keep = min(rank * (in_f + out_f) / (in_f * out_f), 1.0)
    if isinstance(sparsity, dict):
        ratio = number(sparsity.get("ratio"))
        if ratio is None:
            return None
        keep *= 1.0 - ratio
    return keep


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def layer_keep(config: dict[str, Any]) -> tuple[dict[str, float | None], ProfileSource]:
    """{layer name: kept fraction} from ``meta.layer_keep`` (written by the search) or the entries."""
    meta = _dict(config.get("meta"))
    written = _dict(meta.get("layer_keep"))
    if written:
        return {str(name): number(keep) for name, keep in written.items()}, "meta.layer_keep"
    layers = _dict(config.get("layers"))
    if not layers:
        return {}, "none"
    shapes = _dict(meta.get("layer_shapes"))
    return {str(name): _derived_keep(entry, shapes.get(name)) for name, entry in layers.items()}, "derived"


def layer_profile(trial_number: int | None, config: dict[str, Any] | None) -> LayerProfile:
    keeps, source = layer_keep(config) if isinstance(config, dict) else ({}, "none")
    by_type: dict[str, dict[int, float | None]] = {}
    other: dict[str, float | None] = {}
    for name, keep in keeps.items():
        match = _BLOCK_NAME.match(name)
        if match is None:
            other[name] = keep
            continue
        by_type.setdefault(match["type"], {})[int(match["block"])] = keep
    blocks = sorted({block for per_block in by_type.values() for block in per_block})
    traces = {kind: [per_block.get(block) for block in blocks] for kind, per_block in sorted(by_type.items())}
    return LayerProfile(trial=trial_number, source=source, blocks=blocks, traces=traces, other=other)
