"""Per-op profiles of compiled XLA programs: trace events matched to HLO instructions.

Used by step_profile.py. Flag-free and TensorFlow-free: the trace is read with
``jax.profiler.ProfileData``, the instructions from the compiled module's text.
"""

from __future__ import annotations

import collections
import dataclasses
import re

from jax.profiler import ProfileData

from frcnn_jax.models import conv

# In print order. "bwd" categories are what the backward pass (``transpose(...)`` in the JAX
# operation name, or a custom VJP's backward rule) computes.
CATEGORIES = (
    "conv forward",
    "conv input gradient",
    "conv kernel gradient",
    "matmul forward (dense layers)",
    "matmul backward (dense layers)",
    "RoI ops forward",
    "RoI ops backward",
    "NMS and proposals",
    "targets, sampling, anchors",
    "losses",
    "optimizer update",
    "other forward (activations, norms, resize, pad)",
    "other backward",
    "loops (self time)",
    "unattributed (made by XLA)",
)

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([\w\-]+)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"(?:calls|body|condition|to_apply)=\{?%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")
_SOURCE = re.compile(r'source_file="([^"]*)"\s+source_line=(\d+)')
_OPERAND = re.compile(r"%([\w.\-]+)")
_TABLE_ROW = re.compile(r"^(\d+) (.*)$")
_FIELD = re.compile(r"(\w+)=(\d+)")


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    computation: str
    root: bool = False
    op_name: str = ""
    frames: tuple[tuple[str, str, int], ...] = ()  # (file, function, line), innermost first
    calls: tuple[str, ...] = ()
    operands: tuple[str, ...] = ()


def _stack_tables(hlo_text: str):
    """The module's FileNames / FunctionNames / FileLocations / StackFrames tables as a
    function from a stack_frame_id to its frames, innermost first."""
    tables, current = collections.defaultdict(dict), None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = line
            continue
        row = _TABLE_ROW.match(line) if current else None
        if not row:
            current = None
            continue
        key, value = int(row.group(1)), row.group(2)
        if current in ("FileNames", "FunctionNames"):
            tables[current][key] = value.strip('"')
        else:
            tables[current][key] = {k: int(v) for k, v in _FIELD.findall(value)}

    def frames(frame_id: int) -> tuple[tuple[str, str, int], ...]:
        out = []
        while frame_id and frame_id in tables["StackFrames"] and len(out) < 200:
            frame = tables["StackFrames"][frame_id]
            loc = tables["FileLocations"].get(frame.get("file_location_id"), {})
            out.append(
                (
                    tables["FileNames"].get(loc.get("file_name_id"), ""),
                    tables["FunctionNames"].get(loc.get("function_name_id"), ""),
                    loc.get("line", 0),
                )
            )
            parent = frame.get("parent_frame_id", 0) - 1  # printed one-based; 0: none
            frame_id = parent if parent != frame_id else 0
        return tuple(out)

    return frames


def parse_instructions(hlo_text: str) -> dict[str, Instruction]:
    """Every instruction of an HLO module's text by name, with its JAX operation name, its
    Python stack and the computations it calls (fusions: what they fuse)."""
    frames_of = _stack_tables(hlo_text)
    instructions, computation = {}, ""
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match and "=" in line.split("(")[0]:
            name, opcode = match.groups()
            op_name = _OP_NAME.search(line)
            frame_id = _FRAME_ID.search(line)
            source = _SOURCE.search(line)
            frames = frames_of(int(frame_id.group(1))) if frame_id else ()
            if not frames and source:
                frames = ((source.group(1), "", int(source.group(2))),)
            instructions[name] = Instruction(
                name=name,
                opcode=opcode,
                computation=computation,
                root=line.lstrip().startswith("ROOT"),
                op_name=op_name.group(1) if op_name else "",
                frames=frames,
                calls=tuple(_CALLS.findall(line)),
                operands=tuple(_OPERAND.findall(line.split("=", 1)[1].split("),")[0])),
            )
            continue
        match = _COMPUTATION.match(line)
        if match:
            computation = match.group(1)
    return instructions


def _has_metadata(inst: Instruction) -> bool:
    return bool(inst.frames or inst.op_name)


def representative(inst: Instruction, program: Program) -> tuple[Instruction, str]:
    """``(instruction with metadata, opcode)`` that says what ``inst`` does: a fusion's first
    convolution, else its first dot, else itself or its root; an instruction XLA added (a
    copy, a layout change: no metadata) is attributed to its nearest user with metadata."""
    inside = [i for c in inst.calls for i in program.by_computation.get(c, ())]
    for opcode in ("convolution", "dot"):
        for i in inside:
            if i.opcode == opcode and _has_metadata(i):
                return i, opcode
    if _has_metadata(inst) or inst.opcode in ("while", "conditional", "call"):
        return inst, inst.opcode
    for i in inside:
        if i.root and _has_metadata(i):
            return i, inst.opcode
    seen, frontier = {inst.name}, [inst.name]
    for _ in range(4):
        users = [u for n in frontier for u in program.users.get(n, ()) if u not in seen]
        for name in users:
            user = program.instructions[name]
            if _has_metadata(user):
                return user, inst.opcode
        seen.update(users)
        frontier = users
    return inst, inst.opcode


@dataclasses.dataclass
class Program:
    instructions: dict[str, Instruction]
    by_computation: dict[str, list[Instruction]]
    users: dict[str, list[str]]

    @classmethod
    def from_instructions(cls, instructions: dict[str, Instruction]) -> Program:
        by_computation, users = collections.defaultdict(list), collections.defaultdict(list)
        for inst in instructions.values():
            by_computation[inst.computation].append(inst)
            for operand in inst.operands:
                users[operand].append(inst.name)
        return cls(instructions, by_computation, users)


_CONV_FILE = conv.__file__
_PROJECT = _CONV_FILE.rsplit("/models/", 1)[0] + "/"


def categorize(inst: Instruction, opcode: str) -> str:
    """One of :data:`CATEGORIES` for an instruction (a fusion's representative) of ``opcode``."""
    if opcode in ("while", "conditional", "call"):
        return "loops (self time)"
    if not _has_metadata(inst):
        return "unattributed (made by XLA)"
    backward = "transpose(" in inst.op_name
    files = [f for f, _, _ in inst.frames]
    project = [(f, fn, line) for f, fn, line in inst.frames if f.startswith(_PROJECT)]

    def any_file(*parts):
        return any(part in f for f in files for part in parts)

    if any_file("/optax/", "/flax/training/", "/training/optim.py") or (
        project and project[0][0].endswith("/training/step.py") and project[0][1] != "loss_fn"
    ):
        return "optimizer update"
    if any_file("/roi_ops/"):
        return "RoI ops backward" if backward else "RoI ops forward"
    if any_file("/nms.py", "/proposals.py"):
        return "NMS and proposals"
    if any_file("/targets.py", "/sampling.py", "/anchors.py"):
        return "targets, sampling, anchors"
    if any_file("/losses.py"):
        return "losses"
    if opcode == "convolution" or _CONV_FILE in files:
        # XLA:CPU turns 1x1 convolutions into dots. conv.py's backward rule computes the kernel
        # gradient under lax.platform_dependent (a "cond" in the JAX name: on CPU, the scan of
        # im2col matmuls over blocks of rows, with its pads and slices) and the input gradient
        # outside it.
        if not backward:
            return "conv forward"
        return "conv kernel gradient" if "/cond/" in inst.op_name else "conv input gradient"
    if opcode == "dot":
        return "matmul backward (dense layers)" if backward else "matmul forward (dense layers)"
    return "other backward" if backward else "other forward (activations, norms, resize, pad)"


@dataclasses.dataclass
class Event:
    """One execution of an instruction: from its start to its completion (``end_ns``)."""

    name: str
    start_ns: float
    end_ns: float


def trace_events(path: str, instructions: dict[str, Instruction]) -> list[Event]:
    """The executions of the program's instructions in ``path`` (an .xplane.pb).

    XLA:CPU records an event when it starts an instruction and an ``end: NAME`` event when
    the instruction completes: a convolution or a large dot runs asynchronously on the
    intra-op thread pool, so its start event is short and its completion comes later,
    possibly on another thread. Each start is paired with the first completion of the same
    name after it; a start without one ends with its own event.
    """
    starts, ends = collections.defaultdict(list), collections.defaultdict(list)
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            for e in line.events:
                if e.name in instructions:
                    starts[e.name].append((e.start_ns, e.start_ns + e.duration_ns))
                elif e.name.startswith("end: ") and e.name[5:] in instructions:
                    ends[e.name[5:]].append(e.start_ns)
    events = []
    for name, name_starts in starts.items():
        name_starts.sort()
        name_ends = collections.deque(sorted(ends.get(name, ())))
        for start, own_end in name_starts:
            while name_ends and name_ends[0] < start:
                name_ends.popleft()
            end = max(own_end, name_ends.popleft()) if name_ends else own_end
            events.append(Event(name, start, end))
    return events


def wall_attribution(events: list[Event], is_loop) -> tuple[dict[str, float], float]:
    """Nanoseconds of wall time attributed to each instruction, and the time covered.

    A sweep over the timeline: each moment is shared equally by the instructions running
    then, loops (``is_loop(name)``) counting only while none of their body's instructions
    (nor anything else) runs. Moments with nothing running are not covered: the host
    dispatching, or waiting.
    """
    points = sorted({e.start_ns for e in events} | {e.end_ns for e in events})
    by_start = sorted(events, key=lambda e: e.start_ns)
    attributed = collections.defaultdict(float)
    active, next_event, covered = [], 0, 0.0
    for left, right in zip(points, points[1:]):
        while next_event < len(by_start) and by_start[next_event].start_ns <= left:
            active.append(by_start[next_event])
            next_event += 1
        active = [e for e in active if e.end_ns > left]
        running = [e for e in active if e.end_ns >= right]
        if not running:
            continue
        work = [e for e in running if not is_loop(e.name)] or running
        share = (right - left) / len(work)
        for e in work:
            attributed[e.name] += share
        covered += right - left
    return dict(attributed), covered


def module_scope(op_name: str) -> str:
    """The Flax module path in a JAX operation name: ``jit(train_step)/transpose(jvp(FasterRCNN))
    /body/fpn/layer_p2/conv_general_dilated`` -> ``body/fpn/layer_p2``."""
    kept, previous = [], ""
    for part in op_name.split("/")[1:-1]:
        loop_body = part == "body" and previous == "while"
        previous = part
        if loop_body or "(" in part or "->" in part or part in ("while", "cond"):
            continue
        if not part.startswith(("branch_", "closed_call")):
            kept.append(part)
    return "/".join(kept)


@dataclasses.dataclass
class Profile:
    by_category: dict[str, float]  # ms per step
    by_instruction: list[tuple[str, str, float, str]]  # (name, category, ms per step, where)
    covered_ms: float  # per step: time with at least one instruction running


def summarize(events: list[Event], instructions: dict[str, Instruction], *, steps: int):
    """Milliseconds of wall time per step by category and by instruction."""
    program = Program.from_instructions(instructions)
    loops = {n for n, i in instructions.items() if i.opcode in ("while", "conditional", "call")}
    attributed, covered = wall_attribution(events, loops.__contains__)
    by_category = dict.fromkeys(CATEGORIES, 0.0)
    rows = []
    for name, ns in sorted(attributed.items(), key=lambda kv: -kv[1]):
        rep, opcode = representative(instructions[name], program)
        category = categorize(rep, opcode)
        ms = ns / 1e6 / steps
        by_category[category] += ms
        project = [fr for fr in rep.frames if fr[0].startswith(_PROJECT)] or list(rep.frames)
        where = f"{project[0][0].rsplit('/', 2)[-1]}:{project[0][2]}" if project else ""
        rows.append((name, category, ms, f"{where} {module_scope(rep.op_name)}".strip()))
    return Profile(by_category, rows, covered / 1e6 / steps)


def print_profile(profile: Profile, *, wall_ms: float, top: int) -> None:
    idle = max(wall_ms - profile.covered_ms, 0.0)
    print(
        f"median step wall time: {wall_ms:.1f} ms; instructions running: "
        f"{profile.covered_ms:.1f} ms per step"
    )
    print("markdown: | category | ms per step | share of the step |")
    print("markdown: | --- | --- | --- |")
    for category in CATEGORIES:
        ms = profile.by_category[category]
        print(f"markdown: | {category} | {ms:.2f} | {100 * ms / wall_ms:.1f}% |")
    print(f"markdown: | no instruction running (host, dispatch) | {idle:.2f} | "
          f"{100 * idle / wall_ms:.1f}% |")  # fmt: skip
    print(f"markdown: | step (median wall time) | {wall_ms:.2f} | 100% |")
    print(f"top {top} instructions (ms of the step's wall time):")
    for name, category, ms, where in profile.by_instruction[:top]:
        print(f"  {ms:9.1f}  {name:40s} {category:32s} {where}")
