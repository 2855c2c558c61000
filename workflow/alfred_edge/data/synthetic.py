"""The built-in synthetic json_feat tree: a deterministic (seeded) generator in ALFRED's exact
layout, `<root>/<split>/<task_type>-<Obj>-<MRecep|None>-<Recep>-<scene>/trial_T<ts>/` holding
`traj_data.json` (every key real train/valid files have) and `feat_conv.pt` (float32
`[len(plan.low_actions)+1, 512, 7, 7]`, non-negative), plus a splits file
`{split: [{"repeat_idx", "task"}]}`.

The data is learnable: what a model needs to predict each next action and mask is in the
inputs, not noise.
- Instructions spell the plan out: each GotoLocation description names its navigation steps
  in order ("walk forward, turn left, then look down to the sink."), each interaction
  description names the action and the object.
- Frame t (the input when predicting low action t, the last one for <<stop>>) carries, on
  top of non-negative noise in the other channels:
    channels CUE_CHANNEL .. +12  a cue for the next low action (LOW_ACTIONS order, 12 = stop),
                                 1.0 + noise on the cued channel, noise < 0.4 on the others;
    channels SUBGOAL_CHANNEL ..  one-hot of the current subgoal index (capped at 23), and
                                 PROGRESS_CHANNEL the position within the subgoal (0..1);
    channel OBJECT_CHANNEL       at an interaction step, 1.0 on the 7x7 cells the target object
                                 covers, whose 300x300 mask (and bbox) is exactly those cells
                                 scaled up (cell c spans pixels [c*300//7, (c+1)*300//7)).
- The trajectory's specification (task, plan, sizes) is drawn from the seed alone, so the
  manifest is known without writing anything (`manifest_rows`); `write_tree` writes exactly
  those trajectories.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alfred_edge.data.dataset import FRAME_SHAPE, SPLITS

FRAME_BYTES = math.prod(FRAME_SHAPE) * 4  # one float32 frame in feat_conv.pt
# torch.save's zip container around the tensor data, rounded up; used only for the
# parse-time estimate of a synthetic feat_conv.pt's size.
TORCH_SAVE_OVERHEAD = 1536
IMAGE_SIZE = 300
GRID = 7

NAV_ACTIONS = ["MoveAhead_25", "RotateLeft_90", "RotateRight_90", "LookDown_15", "LookUp_15"]
LOW_ACTIONS = NAV_ACTIONS + [
    "PickupObject", "PutObject", "OpenObject", "CloseObject",
    "ToggleObjectOn", "ToggleObjectOff", "SliceObject",
]
CUE_CHANNEL = 0  # 13 channels: LOW_ACTIONS + stop
SUBGOAL_CHANNEL = 16  # 24 channels
PROGRESS_CHANNEL = 40
OBJECT_CHANNEL = 48
NOISE_CHANNEL = 64  # noise from here on

TASK_TYPES = [
    "look_at_obj_in_light", "pick_and_place_simple", "pick_and_place_with_movable_recep",
    "pick_clean_then_place_in_recep", "pick_cool_then_place_in_recep",
    "pick_heat_then_place_in_recep", "pick_two_obj_and_place",
]
OBJECTS = ["Apple", "Book", "Bowl", "Cup", "Egg", "Knife", "Mug", "Pen", "Potato", "Tomato", "Vase", "Watch"]
RECEPTACLES = ["CounterTop", "DiningTable", "Drawer", "Shelf", "SideTable", "Cabinet", "Desk", "Dresser"]
MOVABLE_RECEPTACLES = ["Bowl", "Box", "Pan", "Plate"]
LAMPS = ["DeskLamp", "FloorLamp"]
TRAIN_SCENES = [s for base in (0, 200, 300, 400) for s in range(base + 7, base + 31)]
UNSEEN_SCENES = [10, 219, 308, 424]  # ALFRED's valid_unseen scenes; kept out of train/valid_seen

NAV_PHRASES = {
    "MoveAhead_25": ["walk forward", "move ahead", "go forward"],
    "RotateLeft_90": ["turn left", "turn to the left", "rotate left"],
    "RotateRight_90": ["turn right", "turn to the right", "rotate right"],
    "LookDown_15": ["look down", "look down", "glance down"],
    "LookUp_15": ["look up", "look up", "glance up"],
}
GOAL_TEMPLATES = {
    "look_at_obj_in_light": "examine the {obj} under the {toggle}.",
    "pick_and_place_simple": "put the {obj} on the {recep}.",
    "pick_and_place_with_movable_recep": "put the {obj} in the {mrecep} on the {recep}.",
    "pick_clean_then_place_in_recep": "clean the {obj} and put it on the {recep}.",
    "pick_cool_then_place_in_recep": "cool the {obj} and put it on the {recep}.",
    "pick_heat_then_place_in_recep": "heat the {obj} and put it on the {recep}.",
    "pick_two_obj_and_place": "put two {obj}s on the {recep}.",
}


@dataclass(frozen=True)
class TrajectorySpec:
    """What the seed decides about one trajectory before anything is written."""

    split: str
    index: int  # position within its split
    task: str  # "<task folder>/<trial>", relative to the split folder (as in the splits file)
    task_type: str
    n_low_actions: int
    n_annotations: int
    seed: int

    @property
    def n_frames(self) -> int:
        return self.n_low_actions + 1


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index, stream])


def _draw_task(rng: np.random.Generator, split: str) -> dict:
    task_type = TASK_TYPES[int(rng.integers(len(TASK_TYPES)))]
    obj = str(rng.choice(OBJECTS))
    recep = str(rng.choice(RECEPTACLES))
    mrecep = str(rng.choice(MOVABLE_RECEPTACLES)) if task_type == "pick_and_place_with_movable_recep" else ""
    toggle = str(rng.choice(LAMPS)) if task_type == "look_at_obj_in_light" else ""
    scene = int(rng.choice(UNSEEN_SCENES if split == "valid_unseen" else
                           [s for s in TRAIN_SCENES if s not in UNSEEN_SCENES]))
    stamp = rng.integers([1, 0, 0, 0, 0], [31, 24, 60, 60, 1_000_000])
    trial = "trial_T201909%02d_%02d%02d%02d_%06d" % tuple(int(x) for x in stamp)
    slot4 = toggle or recep
    folder = f"{task_type}-{obj}-{mrecep or 'None'}-{slot4}-{scene}"
    return dict(task_type=task_type, obj=obj, recep=recep, mrecep=mrecep, toggle=toggle,
                scene=scene, trial=trial, task=f"{folder}/{trial}")


def _subgoal_templates(task: dict) -> list[tuple[str, list[str], list[str], str]]:
    """(high action, high args, interaction low actions, target) per subgoal, NoOp excluded.
    GotoLocation subgoals get their navigation steps later."""
    obj, recep, mrecep, toggle = task["obj"], task["recep"], task["mrecep"], task["toggle"]
    o, r = obj.lower(), recep.lower()
    goto = lambda target: ("GotoLocation", [target.lower()], [], target)  # noqa: E731
    pick = ("PickupObject", [o], ["PickupObject"], obj)
    put = ("PutObject", [o, r], ["PutObject"], recep)
    kind = task["task_type"]
    if kind == "pick_and_place_simple":
        return [goto(obj), pick, goto(recep), put]
    if kind == "look_at_obj_in_light":
        return [goto(obj), pick, goto(toggle),
                ("ToggleObject", [toggle.lower()], ["ToggleObjectOn"], toggle)]
    if kind == "pick_two_obj_and_place":
        return [goto(obj), pick, goto(recep), put, goto(obj), pick, goto(recep), put]
    if kind == "pick_and_place_with_movable_recep":
        return [goto(obj), pick, goto(mrecep),
                ("PutObject", [o, mrecep.lower()], ["PutObject"], mrecep),
                ("PickupObject", [mrecep.lower()], ["PickupObject"], mrecep), goto(recep),
                ("PutObject", [mrecep.lower(), r], ["PutObject"], recep)]
    if kind == "pick_clean_then_place_in_recep":
        steps = ["PutObject", "ToggleObjectOn", "ToggleObjectOff", "PickupObject"]
        return [goto(obj), pick, goto("SinkBasin"), ("CleanObject", [o], steps, "SinkBasin"),
                goto(recep), put]
    if kind == "pick_heat_then_place_in_recep":
        steps = ["OpenObject", "PutObject", "CloseObject", "ToggleObjectOn", "ToggleObjectOff",
                 "OpenObject", "PickupObject", "CloseObject"]
        return [goto(obj), pick, goto("Microwave"), ("HeatObject", [o], steps, "Microwave"),
                goto(recep), put]
    steps = ["OpenObject", "PutObject", "CloseObject", "OpenObject", "PickupObject", "CloseObject"]
    return [goto(obj), pick, goto("Fridge"), ("CoolObject", [o], steps, "Fridge"), goto(recep), put]


def _draw_plan(rng: np.random.Generator, task: dict, nav_steps: tuple[int, int]) -> list[dict]:
    """Subgoals with their low actions (navigation steps drawn here)."""
    plan = []
    for action, args, low, target in _subgoal_templates(task):
        if action == "GotoLocation":
            n = int(rng.integers(nav_steps[0], nav_steps[1] + 1))
            low = [NAV_ACTIONS[int(i)] for i in rng.integers(len(NAV_ACTIONS), size=n)]
            if "MoveAhead_25" not in low:  # navigation always moves (as in every real plan)
                low[-1] = "MoveAhead_25"
        plan.append(dict(action=action, args=args, low=list(low), target=target))
    return plan


def trajectory_specs(seed: int, trajectories: dict[str, int], annotations_per_trajectory: int,
                     nav_steps: tuple[int, int]) -> list[TrajectorySpec]:
    """The trajectories the generator writes for these settings, in split order (cheap)."""
    specs = []
    for split in SPLITS:
        for index in range(trajectories.get(split, 0)):
            rng = _rng(seed, split, index, 0)
            task = _draw_task(rng, split)
            plan = _draw_plan(rng, task, nav_steps)
            specs.append(TrajectorySpec(
                split=split, index=index, task=task["task"], task_type=task["task_type"],
                n_low_actions=sum(len(sg["low"]) for sg in plan),
                n_annotations=annotations_per_trajectory, seed=seed))
    return specs


def _object_id(name: str, rng: np.random.Generator) -> str:
    x, y, z = rng.uniform(-3, 3, size=3)
    return f"{name}|{x:+06.2f}|{y:+06.2f}|{z:+06.2f}"


def _coordinate(name: str, rng: np.random.Generator) -> list:
    x, y, z = (round(float(v), 4) for v in rng.uniform(-12, 12, size=3))
    return [name, [x, x, y, y, z, z]]


def _cell_box(rng: np.random.Generator) -> tuple[tuple[int, int, int, int], list[int], list[list[int]]]:
    """A target on the 7x7 grid: (row, col, height, width) in cells, its bbox and RLE mask."""
    h, w = (int(v) for v in rng.integers(1, 3, size=2))
    row, col = int(rng.integers(0, GRID - h + 1)), int(rng.integers(0, GRID - w + 1))
    x1, x2 = col * IMAGE_SIZE // GRID, (col + w) * IMAGE_SIZE // GRID - 1
    y1, y2 = row * IMAGE_SIZE // GRID, (row + h) * IMAGE_SIZE // GRID - 1
    rle = [[y * IMAGE_SIZE + x1, x2 - x1 + 1] for y in range(y1, y2 + 1)]
    return (row, col, h, w), [x1, y1, x2, y2], rle


def _api_action(low: str, subgoal: dict, task: dict, ids: dict, rng) -> dict:
    if low == "MoveAhead_25":
        return {"action": "MoveAhead", "forceAction": True, "moveMagnitude": 0.25}
    if low in NAV_ACTIONS:
        return {"action": low.split("_")[0], "forceAction": True}
    target = ids[subgoal["target"]]
    if low == "PutObject":
        held = ids[task["mrecep"]] if subgoal["args"][0] == task["mrecep"].lower() and task["mrecep"] else ids[task["obj"]]
        return {"action": "PutObject", "forceAction": True, "objectId": held,
                "placeStationary": True, "receptacleObjectId": target}
    if low == "PickupObject" and subgoal["action"] in ("CleanObject", "HeatObject", "CoolObject"):
        return {"action": low, "objectId": ids[task["obj"]]}
    if low.startswith("Toggle") and subgoal["action"] == "CleanObject":
        return {"action": low, "cleanObjectId": ids[task["obj"]],
                "coordinateObjectId": _coordinate(task["obj"], rng),
                "coordinateReceptacleObjectId": _coordinate("SinkBasin", rng),
                "forceVisible": True, "objectId": ids["Faucet"]}
    if low.startswith("Toggle") and subgoal["action"] == "HeatObject":
        return {"action": low, "coordinateReceptacleObjectId": _coordinate("Microwave", rng),
                "forceVisible": True, "objectId": target}
    return {"action": low, "objectId": target}


def _planner_action(subgoal: dict, task: dict, ids: dict, rng) -> dict:
    action, target = subgoal["action"], subgoal["target"]
    if action == "GotoLocation":
        x, z, rot, hor = rng.integers(-12, 12), rng.integers(-12, 12), rng.integers(4) * 90, rng.choice([0, 15, 30, 45, 60])
        return {"action": action, "location": f"loc|{x}|{z}|{rot // 90}|{hor}"}
    base = {"action": action, "coordinateObjectId": _coordinate(task["obj"], rng),
            "coordinateReceptacleObjectId": _coordinate(task["recep"], rng),
            "forceVisible": True, "objectId": ids[target]}
    if action == "PutObject":
        base["receptacleObjectId"] = ids[target]
        base["objectId"] = ids[task["obj"]]
    if action == "CleanObject":
        base["cleanObjectId"] = ids[task["obj"]]
    if action in ("HeatObject", "CoolObject"):
        del base["coordinateObjectId"]
    return base


def _high_desc(subgoal: dict, variant: int) -> str:
    target = subgoal["target"].lower()
    if subgoal["action"] == "GotoLocation":
        steps = [NAV_PHRASES[a][variant % 3] for a in subgoal["low"]]
        said = ", ".join(steps[:-1]) + (", then " if len(steps) > 1 else "") + steps[-1]
        return f"{said[0].upper()}{said[1:]} to the {target}."
    verbs = {"PickupObject": "Pick up the {}.", "PutObject": "Put it on the {}.",
             "ToggleObject": "Turn on the {}.", "CleanObject": "Rinse it in the {}.",
             "HeatObject": "Heat it in the {}.", "CoolObject": "Chill it in the {}."}
    return verbs[subgoal["action"]].format(target)


def traj_data(spec: TrajectorySpec, nav_steps: tuple[int, int]) -> tuple[dict, list[dict]]:
    """The trajectory's traj_data.json content, and per low action the frame cue
    (`{"action", "high_idx", "progress", "box"}`) that `features` turns into frames."""
    rng = _rng(spec.seed, spec.split, spec.index, 0)
    task = _draw_task(rng, spec.split)
    plan = _draw_plan(rng, task, nav_steps)
    rng = _rng(spec.seed, spec.split, spec.index, 1)
    names = {task["obj"], task["recep"], "SinkBasin", "Microwave", "Fridge", "Faucet"} | (
        {task["mrecep"]} if task["mrecep"] else set()) | ({task["toggle"]} if task["toggle"] else set())
    ids = {name: _object_id(name, rng) for name in sorted(names)}

    low_actions, high_pddl, cues = [], [], []
    for high_idx, subgoal in enumerate(plan):
        high_pddl.append({"discrete_action": {"action": subgoal["action"], "args": subgoal["args"]},
                          "high_idx": high_idx, "planner_action": _planner_action(subgoal, task, ids, rng)})
        for step, low in enumerate(subgoal["low"]):
            args, box = {}, None
            if low not in NAV_ACTIONS:
                box, bbox, rle = _cell_box(rng)
                args = {"bbox": bbox, "mask": rle,
                        "point": [(bbox[0] + bbox[2]) // 2, (bbox[1] + bbox[3]) // 2]}
            low_actions.append({"api_action": _api_action(low, subgoal, task, ids, rng),
                                "discrete_action": {"action": low, "args": args},
                                "high_idx": high_idx})
            cues.append({"action": LOW_ACTIONS.index(low), "high_idx": high_idx,
                         "progress": step / len(subgoal["low"]), "box": box})
    high_pddl.append({"discrete_action": {"action": "NoOp", "args": []}, "high_idx": len(plan),
                      "planner_action": {"action": "End", "value": 1}})
    cues.append({"action": len(LOW_ACTIONS), "high_idx": len(plan) - 1, "progress": 1.0, "box": None})

    images = [{"high_idx": a["high_idx"], "image_name": "%09d.png" % i, "low_idx": i}
              for i, a in enumerate(low_actions)]
    fmt = dict(obj=task["obj"].lower(), recep=task["recep"].lower(),
               mrecep=task["mrecep"].lower(), toggle=task["toggle"].lower())
    anns = [{"assignment_id": "SYN%010d_%d" % (int(rng.integers(1e9)), r),
             "high_descs": [_high_desc(sg, r) for sg in plan],
             "task_desc": GOAL_TEMPLATES[task["task_type"]].format(**fmt).capitalize(),
             "votes": [1, 1, 1]} for r in range(spec.n_annotations)]
    scene_num = task["scene"]
    data = {
        "images": images,
        "pddl_params": {"mrecep_target": task["mrecep"], "object_sliced": False,
                        "object_target": task["obj"],
                        "parent_target": "" if task["toggle"] else task["recep"],
                        "toggle_target": task["toggle"]},
        "plan": {"high_pddl": high_pddl, "low_actions": low_actions},
        "scene": {
            "dirty_and_empty": False, "floor_plan": f"FloorPlan{scene_num}",
            "init_action": {"action": "TeleportFull", "horizon": 30, "rotateOnTeleport": True,
                            "rotation": int(rng.integers(4)) * 90,
                            "x": round(float(rng.uniform(-3, 3)), 2), "y": 0.9009992,
                            "z": round(float(rng.uniform(-3, 3)), 2)},
            "object_poses": [{"objectName": f"{name}_{int(rng.integers(16**8)):08x}",
                              "position": dict(zip("xyz", (round(float(v), 5) for v in rng.uniform(-3, 3, 3)))),
                              "rotation": {"x": 0.0, "y": 0.0, "z": 0.0}}
                             for name in sorted(names - {"Faucet"})],
            "object_toggles": [{"isOn": False, "objectType": task["toggle"]}] if task["toggle"] else [],
            "random_seed": int(rng.integers(2**31)), "scene_num": scene_num,
        },
        "task_id": task["trial"],
        "task_type": task["task_type"],
        "turk_annotations": {"anns": anns},
    }
    return data, cues


def features(spec: TrajectorySpec, cues: list[dict]) -> np.ndarray:
    """float32 [n_frames, 512, 7, 7], non-negative: noise plus the cues described above."""
    rng = _rng(spec.seed, spec.split, spec.index, 2)
    frames = rng.random((len(cues),) + FRAME_SHAPE, dtype=np.float32)
    frames[:, :NOISE_CHANNEL] *= 0.4
    frames[:, OBJECT_CHANNEL] = 0.0
    for t, cue in enumerate(cues):
        frames[t, CUE_CHANNEL + cue["action"]] += 1.0
        frames[t, SUBGOAL_CHANNEL + min(cue["high_idx"], 23)] += 1.0
        frames[t, PROGRESS_CHANNEL] = cue["progress"]
        if cue["box"] is not None:
            row, col, h, w = cue["box"]
            frames[t, OBJECT_CHANNEL, row:row + h, col:col + w] = 1.0
    return frames


def json_text(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


def splits_file(specs: list[TrajectorySpec]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {split: [] for split in SPLITS if any(s.split == split for s in specs)}
    for spec in specs:
        out[spec.split] += [{"repeat_idx": r, "task": spec.task} for r in range(spec.n_annotations)]
    return out


def manifest_rows(specs: list[TrajectorySpec]) -> list[dict]:
    """Manifest rows for the tree `write_tree` would write, without writing it. Sizes are
    estimates from the spec (frames exact; JSON and torch container bytes approximate);
    the `manifest` job measures the written files."""
    return [dict(split=s.split, task=s.task, task_type=s.task_type, n_annotations=s.n_annotations,
                 repeat_idx=list(range(s.n_annotations)), n_frames=s.n_frames, n_low_actions=s.n_low_actions,
                 feat_bytes=s.n_frames * FRAME_BYTES + TORCH_SAVE_OVERHEAD,
                 json_bytes=8000 + 2800 * s.n_low_actions + 600 * s.n_annotations, problem="")
            for s in specs]


def write_tree(specs: list[TrajectorySpec], nav_steps: tuple[int, int], root: Path,
               splits_path: Path | None, progress: bool = True) -> None:
    """Write the trajectories' folders under root and (unless None) the splits file, each
    file atomically."""
    import torch
    from tqdm import tqdm

    from alfred_edge import atomic

    for spec in tqdm(specs, desc="synthesize", unit="traj", disable=not progress):
        folder = Path(root) / spec.split / spec.task
        data, cues = traj_data(spec, nav_steps)
        atomic.write_text(folder / "traj_data.json", json_text(data))
        with atomic.atomic_path(folder / "feat_conv.pt") as tmp:
            torch.save(torch.from_numpy(features(spec, cues)), tmp)
    if splits_path is not None:
        atomic.write_text(splits_path, json.dumps(splits_file(specs), indent=1))
