"""Selection, front-end neutral: keys of activation sites, scores read from the user, and the sites
they choose (threshold, the N lowest, --collapse keys). Used by the ONNX and torch.fx front ends.

A site is any object with `.keys` (most specific first) and `.name`; an index maps every key to the
sites it names (keys.resolve_keys for ONNX, fx.graph.key_index for torch.fx).
"""
from __future__ import annotations

import difflib
import json
import math
import numbers
import os
from pathlib import Path

import numpy as np

from ..errors import CollapseError

#: separates a module path from the call index of one of its call sites: "layer1.1.relu:1"
SITE_SEP = ":"


def site_key(path: str, call: int, calls: int) -> str:
    """The key of one call site: the module path when the module is called once, else path:call."""
    return path if calls == 1 else f"{path}{SITE_SEP}{call}"


#: marks the key of an activation called outside any module: "relu()" / "relu():1"
ROOT_CALL = "()"


def root_keys(sites: list) -> dict[int, list[str]]:
    """id(site) -> its keys as an activation called in the root forward, outside any module (F.relu(x) there):
    `<kind>()`, or `<kind>():i` for the i-th of several of that kind in call order (bare `<kind>()` names
    them all). Node names differ between symbolic_trace, torch.export and the two ONNX exporters; these keys
    are the same wherever the same root activations are found. `sites`: the sites without a module path,
    in call order."""
    by_kind: dict[str, list] = {}
    for s in sites:
        by_kind.setdefault(s.kind, []).append(s)
    out: dict[int, list[str]] = {}
    for kind, group in by_kind.items():
        for i, s in enumerate(group):
            k = site_key(kind + ROOT_CALL, i, len(group))
            out[id(s)] = [k] if len(group) == 1 else [k, kind + ROOT_CALL]
    return out


def display_key(a) -> str:
    """The most specific key of a site (its call-site key, else its first node name)."""
    return a.keys[0] if a.keys else a.name


class KeyIndex(dict):
    """key -> [sites], and `never` {key: op}: the keys of nonlinear ops no front end collapses (Tanh,
    Sigmoid, Softplus...), so that a key naming one is told why, not offered a near match (acts.hardtanh
    for acts.tanh); `before`: the keys an earlier run collapsed (COLLAPSED_META in the model's metadata),
    which name no site any more and are skipped (skipped_before says which)."""

    def __init__(self, index: dict, never: dict | None = None, before=(), nested: dict | None = None):
        super().__init__(index)
        self.never = dict(never or {})
        self.before = frozenset(before) - set(index)
        # node name -> "If node 'if0'": nodes inside control-flow bodies, which no pass touches (told, not near-matched)
        self.nested = {k: v for k, v in (nested or {}).items() if k not in index}

    def skipped_before(self, keys) -> list:
        """The given keys that an earlier run collapsed (they name no site of this model)."""
        return [k for k in keys if k in self.before]


#: model metadata_props key under which a written ONNX model lists (JSON) the activation keys collapsed in it, by
#: this run and the runs before: a second run given the first run's scores file (or --collapse keys) skips them
#: with a note, where it stopped at "unknown layer key" without saying the key was collapsed before
COLLAPSED_META = "collapse_passes.collapsed"


def collapsed_before(model) -> list:
    """The keys COLLAPSED_META of an ONNX model lists (none when absent or unreadable)."""
    import json

    for p in getattr(model, "metadata_props", ()):
        if p.key == COLLAPSED_META:
            try:
                keys = json.loads(p.value)
            except (ValueError, RecursionError):   # a hostile value ("[[[[..." nested past the stack) is unreadable too
                return []
            return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []
    return []


def record_collapsed(model, keys) -> None:
    """Set COLLAPSED_META of `model` (an ONNX proto this run made) to `keys` plus those it listed already."""
    import json

    keys = sorted(set(collapsed_before(model)) | set(keys))
    kept = [p for p in model.metadata_props if p.key != COLLAPSED_META]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = COLLAPSED_META, json.dumps(keys)


def lookup(index: dict, key: str, source: str = "scores") -> list:
    """The sites `key` names; an unknown key is one line with near matches (or the valid call sites)."""
    if key in index:
        return index[key]
    path, sep, call = key.rpartition(SITE_SEP)
    if key in getattr(index, "before", ()):   # collapsed by an earlier run: a score for it is skipped (api's note)
        if not source.startswith("collapse"):
            return []
        rest = (f"; module {path!r}'s remaining call sites are {', '.join(display_key(a) for a in index[path])}"
                if sep and path in index else "")
        raise CollapseError(f"{source}: {key!r} was collapsed by an earlier collapse_passes run of this model (its "
                            f"metadata, {COLLAPSED_META}, lists it), so it names no activation now{rest}; drop the key, "
                            "or collapse the original model")
    never = getattr(index, "never", {})
    op = never.get(key) or (never.get(path) if sep and call.isdigit() else None)
    if op:
        raise CollapseError(f"{source}: {key!r} is a {op}, which has no linear regime: it is never collapsed and "
                            "stays as it is; --list-keys (collapse_passes.list_keys) lists the activations that can be")
    holder = getattr(index, "nested", {}).get(key)
    if holder:
        raise CollapseError(f"{source}: {key!r} is inside the body of {holder}: activations in If / Loop / Scan bodies "
                            "are left as they are; save the branch you need as a model of its own to collapse it, or "
                            "drop the key")
    if sep and call.isdigit() and path in index:
        sites = [display_key(a) for a in index[path]]
        raise CollapseError(f"{source}: {key!r} names no call site: module {path!r} is called "
                            f"{len(sites)} time(s); its keys are {', '.join(sites)} (call indices count the calls in "
                            "this model: in a model collapsed before, the calls collapsed then are gone)")
    sites = [a for found in index.values() for a in found]
    onnx_sites = sites and all(hasattr(a, "module_path") for a in sites)   # the ONNX front end's activations
    if "." in key and onnx_sites and not any(a.module_path for a in sites):
        raise CollapseError(f"{source}: unknown layer key {key!r}: this model's nodes carry no torch module path (the "
                            "exporter's scope names and metadata are gone, as after onnxslim or onnxruntime's optimizer), "
                            "so module-path keys name nothing; use the keys --list-keys prints, or score this file "
                            "with --method")
    near = difflib.get_close_matches(key, list(index), n=3, cutoff=0.5)
    shown = list(dict.fromkeys(_offered(index, n) if source.startswith("collapse") else repr(n) for n in near))
    hint = f"; did you mean {', '.join(shown)}?" if near else \
        "; collapse_passes.list_keys(model) (--list-keys on the command line) lists this model's activation keys"
    if onnx_sites and not any(a.module_path for a in sites) and key.replace(SITE_SEP, "_").isidentifier():
        # a top-level module's path ("relu", a ResNet stem's) has no dot: the scores of the export before onnxslim
        # were offered 'relu()', the key of every root-level call, with no word of the paths the file lost
        hint += (" (if it is a torch module path: this model's nodes carry none, the exporter's scope names and "
                 "metadata are gone, as after onnxslim or onnxruntime's optimizer; score this file with --method)")
    raise CollapseError(f"{source}: unknown layer key {key!r}{hint}")


def _offered(index: dict, key: str) -> str:
    """A near match as --collapse can take it: a node name with a comma (tf2onnx's "relu,1") is split there by
    --collapse K1,K2 and the string form collapse="k1,k2", so the site's own comma-free key is offered in its place
    (resolve_keys makes the display key one where it can), else the ways that take any key."""
    if "," not in key:
        return repr(key)
    sites = index.get(key, [])
    alt = display_key(sites[0]) if len(sites) == 1 else None
    if alt and "," not in alt and index.get(alt) == sites:
        return f"{alt!r} (node {key!r}: --collapse splits keys at commas)"
    return (f"{key!r} (--collapse splits keys at commas: give it in a --scores file with --threshold, or as "
            f"collapse=[{key!r}] in Python)")


def _unique_keys(pairs, src: str) -> dict:
    """A JSON object whose key appears twice with different values is refused: json keeps the last one
    silently, and an edited scores file is read as the user meant it or not at all."""
    out: dict = {}
    for k, v in pairs:
        if k in out and out[k] != v:
            raise CollapseError(f"{src}: key {str(k)[:80]!r} appears twice, with {str(out[k])[:40]} and "
                                f"{str(v)[:40]}; keep one")
        out[k] = v
    return out


#: the fields of a scores file besides "scores" (--save-scores, ScoreResult.as_dict; docs/scores.md): what each must
#: hold, and its test; null reads as absent, other fields are left alone (a newer writer's)
SCORE_KINDS = ("activation", "block")
_FIELDS = {
    "method": ("a string (the method's name)", lambda v: isinstance(v, str)),
    "variant": ("a string", lambda v: isinstance(v, str)),
    "kind": (f"one of {list(SCORE_KINDS)}", lambda v: isinstance(v, str) and v in SCORE_KINDS),
    "details": ("an object of per-key objects", lambda v: isinstance(v, dict) and all(isinstance(d, dict)
                                                                                      for d in v.values())),
    "notes": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)),
}


def _check_fields(data: dict, src: str) -> None:
    """A known field of the wrong type or value is refused: `"kind": 5` (or "blocks") was read as activation
    scores, and `"details": []` as a file without per-channel statistics, silently."""
    for field, (want, ok) in _FIELDS.items():
        v = data.get(field)
        if v is not None and not ok(v):
            shown = repr(v) if len(repr(v)) < 40 else f"a {type(v).__name__}"
            raise CollapseError(f'{src}: "{field}" is {shown}, expected {want}; fix the field or remove it '
                                "(--save-scores writes the format, docs/scores.md)")


def read_scores(scores) -> dict[str, float]:
    """Accept {"scores": {...}}, a plain {key: score} dict, or a path to a JSON file."""
    src = "scores"
    if isinstance(scores, (str, os.PathLike)):
        src = str(scores)
        p = Path(scores)
        if not p.is_file():
            raise CollapseError(f"{src}: scores file not found")
        try:
            data = json.loads(p.read_text(), object_pairs_hook=lambda pairs: _unique_keys(pairs, src))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CollapseError(f"{src}: not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                                'expected {"scores": {"<key>": <float>}}') from None
        except (ValueError, RecursionError) as exc:  # integers of > 4300 digits, nesting deeper than the stack
            why = ("nested too deeply" if isinstance(exc, RecursionError) else "a number with more digits than "
                   "Python reads" if "digits" in str(exc) else " ".join(str(exc).split())[:80])
            raise CollapseError(f"{src}: JSON not accepted ({why}); "
                                'expected {"scores": {"<key>": <float>}}') from None
        if not isinstance(data, dict) or "scores" not in data:
            raise CollapseError(f'{src}: no "scores" object; expected {{"scores": {{"<key>": <float>}}}}')
        _check_fields(data, src)
        data = data["scores"]
    elif isinstance(scores, dict):
        if "scores" in scores and isinstance(scores["scores"], dict):
            _check_fields(scores, src)
        data = scores["scores"] if "scores" in scores and isinstance(scores["scores"], dict) else scores
    else:
        raise CollapseError(f"scores must be a dict or a JSON path, got {type(scores).__name__}")
    if not isinstance(data, dict):
        raise CollapseError(f'{src}: "scores" must map layer keys to numbers')
    out = {}
    for k, v in data.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):   # numpy scalars are numbers
            shown = repr(v) if isinstance(v, (str, type(None))) and len(repr(v)) < 40 else f"a {type(v).__name__}"
            raise CollapseError(f"{src}: score of {str(k)[:80]!r} is {shown}, not a number")
        try:
            fv = float(v)
        except OverflowError:
            fv = math.inf
        if not math.isfinite(fv):
            raise CollapseError(f"{src}: score of {str(k)[:80]!r} is {'too large' if isinstance(v, int) else v}, "
                                "expected a finite number")
        out[str(k)] = fv
    return out


def block_scores_given(scores) -> dict[str, float] | None:
    """The residual-block scores of a scores file or dict written by --save-scores after --method lacoot
    ("kind": "block"; older files: "method": "lacoot"), else None: those keys name blocks, not activations,
    and select blocks for remove_blocks (--remove-blocks) without computing LaCoOT again."""
    data = scores
    if isinstance(scores, (str, os.PathLike)):
        try:
            data = json.loads(Path(scores).read_text())
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return None   # read_scores says what is wrong with it
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("scores"), dict):   # a "kind" of the wrong type read as activation scores
        _check_fields(data, str(scores) if isinstance(scores, (str, os.PathLike)) else "scores")
    kind = data.get("kind") or ("block" if str(data.get("method", "")).lower() == "lacoot" else None)
    return read_scores(scores) if kind == "block" else None


def assign_scores(acts, index, raw: dict[str, float], src: str, notes: list) -> dict[int, float]:
    """id(activation) -> score. A key naming several sites (the bare path of a shared module) scores
    all of them; a key naming one site (path:i, a node name) overrides it for that site."""
    by_act: dict[int, float] = {}
    origin: dict[int, str] = {}
    resolved = [(key, s, lookup(index, key, src)) for key, s in raw.items()]
    for key, s, targets in sorted(resolved, key=lambda r: len(r[2]) == 1):
        if len(targets) > 1:
            sites = ", ".join(display_key(a) for a in targets)
            notes.append(f"key {key!r} names {len(targets)} activations (a module called at several places: "
                         f"{sites}): the score applies to each of them unless a key names that site")
        for a in targets:
            if len(targets) == 1 and id(a) in by_act and by_act[id(a)] != s and \
                    len(index.get(origin[id(a)], ())) == 1:
                raise CollapseError(f"{src}: keys {origin[id(a)]!r} and {key!r} name the same activation "
                                    f"with different scores ({by_act[id(a)]} vs {s}); keep one")
            by_act[id(a)] = s
            origin[id(a)] = key
    return by_act


def check_selection(cfg) -> None:
    """Refuse selection arguments of the wrong type or value as bad input (CollapseError), before any
    work; normalise `collapse` given as one string ("k1,k2") to its list of keys. The numeric settings
    too (config.check_settings)."""
    from ..config import check_settings

    check_settings(cfg)
    if isinstance(cfg.collapse, str):
        keys = [k.strip() for k in cfg.collapse.split(",") if k.strip()]
        if not keys:
            raise CollapseError(f"collapse {cfg.collapse!r} names no key; give keys (run --list-keys to see them)")
        cfg.collapse = keys
    elif cfg.collapse is not None:
        if not isinstance(cfg.collapse, (list, tuple, set, frozenset)):
            raise CollapseError(f"collapse must be a list of keys, got {type(cfg.collapse).__name__}")
        bad = [k for k in cfg.collapse if not isinstance(k, str) or not k]
        if bad:
            raise CollapseError(f"collapse keys must be non-empty strings, got {bad[0]!r}")
    for name in ("threshold", "remove_blocks"):
        v = getattr(cfg, name, None)
        if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)
                              or not math.isfinite(float(v))):
            raise CollapseError(f"{name} must be a finite number, got {v!r}")
    lacoot = str(cfg.method or "").strip().lower() == "lacoot"
    saved_blocks = cfg.scores is not None and not lacoot and block_scores_given(cfg.scores) is not None
    if getattr(cfg, "remove_blocks", None) is not None and not (lacoot or saved_blocks):
        raise CollapseError("remove_blocks (--remove-blocks) needs method='lacoot' (--method lacoot), or block scores "
                            "it saved (--save-scores, given as --scores): the blocks are chosen by their LaCoOT score")
    chooses_by_score = [f for f, v in (("threshold", cfg.threshold), ("remove", cfg.remove),
                                       ("target_speedup", getattr(cfg, "target_speedup", None))) if v is not None]
    if chooses_by_score and cfg.scores is None and cfg.method is None:
        # as the CLI refuses --threshold without --scores / --method: the library ran, collapsed nothing and said
        # only "no scores given" in a note (collapse(m, threshold=0.2))
        flag = chooses_by_score[0]
        data = (" (calib= is the data a method= scores with; it gives no scores by itself)"
                if getattr(cfg, "calib", None) is not None else "")
        raise CollapseError(f"{flag} (--{flag.replace('_', '-')}) chooses activations by their scores, and none are "
                            f"given{data}: add scores= (--scores FILE.json) or method= (--method), or name keys with "
                            "collapse=")
    if (lacoot and cfg.scores is None or saved_blocks) and chooses_by_score:
        # LaCoOT scores blocks only: a threshold meant for them would otherwise select no activation, exit 0
        what = "these scores (saved after --method lacoot) are" if saved_blocks else \
            "method='lacoot' (--method lacoot) scores"
        raise CollapseError(f"{what} residual blocks, not activations, so "
                            f"{chooses_by_score[0]} (--{chooses_by_score[0].replace('_', '-')}) would select nothing; "
                            "use remove_blocks=T (--remove-blocks T) to replace the blocks scoring <= T by their "
                            "skip, or give activation scores (--scores)")
    if cfg.remove is not None and (isinstance(cfg.remove, (bool, np.bool_)) or not isinstance(cfg.remove, numbers.Integral)
                                   or cfg.remove < 1):
        # remove=0 asks for the 0 lowest scores: a run that collapses nothing and says nothing about why
        raise CollapseError(f"remove (--remove) must be an integer >= 1 (collapse the N lowest-scored activations), "
                            f"got {cfg.remove!r}; leave it out to run only the exact clean-ups (folding, merging)")


def blocks_to_remove(block_scores: dict, remove_blocks, warnings: list) -> list[str]:
    """The block keys scoring <= remove_blocks (sorted); a threshold that removes none is said, as --threshold's
    is (a run that removed nothing only said that no activation was chosen). Both front ends. Block scores with no
    remove_blocks at all (method='lacoot' alone) are said too: a note before 2026-11-29, easy to miss."""
    if not block_scores:
        return []
    if remove_blocks is None:   # lacoot scores blocks only: without a threshold the run removes and collapses nothing
        warnings.append(f"{len(block_scores)} residual block(s) scored (LaCoOT, lowest {min(block_scores.values()):.4g}) "
                        "and none removed: give remove_blocks=T (--remove-blocks T) to replace the blocks scoring <= T "
                        "by their skip")
        return []
    picked = sorted(k for k, v in block_scores.items() if v <= remove_blocks)
    if not picked:
        warnings.append(f"remove-blocks {remove_blocks} removes nothing: the lowest block score is "
                        f"{min(block_scores.values()):.4g}")
    return picked


def choose(acts, index, act_scores: dict, cfg, warnings: list) -> list:
    """The chosen sites, in model order: --collapse keys, then scores by threshold or the N lowest."""
    chosen: dict[int, object] = {}
    for key in cfg.collapse or []:
        targets = lookup(index, key, "collapse (--collapse)")
        if len(targets) > 1:
            warnings.append(f"--collapse {key!r} names {len(targets)} call sites of one module "
                            f"({', '.join(display_key(a) for a in targets)}): all of them are collapsed")
        for a in targets:
            chosen[id(a)] = a
    scored = [a for a in acts if id(a) in act_scores]
    if cfg.threshold is not None:
        if not math.isfinite(cfg.threshold):
            raise CollapseError(f"threshold must be a finite number, got {cfg.threshold}")
        picked = [a for a in scored if act_scores[id(a)] <= cfg.threshold]
        if scored and not picked:
            warnings.append(f"threshold {cfg.threshold} collapses nothing: the lowest score is "
                            f"{min(act_scores.values()):.4g}")
        for a in picked:
            chosen[id(a)] = a
    elif cfg.remove is not None:
        if cfg.remove > len(scored):
            warnings.append(f"remove {cfg.remove} asks for more activations than have scores ({len(scored)})")
        ranked = sorted(scored, key=lambda a: (act_scores[id(a)], acts.index(a)))
        for a in ranked[:cfg.remove]:
            chosen[id(a)] = a
    elif act_scores and not cfg.collapse and getattr(cfg, "target_speedup", None) is None:
        given = f"--method {cfg.method} scored the activations" if getattr(cfg, "method", None) else "scores given"
        warnings.append(f"{given} without --threshold, --remove or --target-speedup: nothing collapsed")
    return [a for a in acts if id(a) in chosen]
