"""Where a UNet call's time goes, layer type by layer type: ours (torch's profiler) against OpenVINO (its
per-layer performance counters), on the same SD 1.5 UNet and inputs. From the repository root:

    python -m benchmarks.layer_profile                      # 64×64 latent, batch 2, float32
    python -m benchmarks.layer_profile --side 32 --calls 3
    python -m benchmarks.layer_profile --no-openvino        # ours only (plain and fast), no conversion

Both sides hold the weights of benchmarks.versus_diffusers (`fill_random_`, seed 0) and get its batch-2 inputs.
Ours is profiled twice, as the plain network and as `fast.optimize` leaves it; OpenVINO converts the plain
network (`openvino.convert_model`) and compiles it for the CPU in float32 with PERF_COUNT on.

Every entry on either side is put in one row of the table by what it computes:

    convolution 3×3     the UNet's 3×3 convolutions (stride 1 and the stride-2 downsampling)
    convolution 1×1     skip connections and the transformers' proj_in/proj_out
    linear              q, k, v, out, the feed-forward, the timestep MLP
    attention core      softmax(q kᵀ / √d) v, given q, k and v
    normalisation       GroupNorm and LayerNorm (OpenVINO: MVN, with what it fused into it)
    elementwise         SiLU, GELU, products, sums, the nearest upsampling
    layout              copies, transposes, reorders, concatenation, padding, splits
    Python and dispatch ours only: time inside a module but in no operator (the profiler's own cost included)

Torch side: a `record_function` labelled with its path encloses every module's call, and each operator's
self time goes to the innermost module that called it; the operator and that module's class give the row.
OpenVINO side: a node's name starts with the path of the module it was traced from (its performance
counters give node type and real time); the node type and that module's class give the row. OpenVINO fuses
operators into their neighbours (biases, residual sums and SiLU into convolutions and MVN), so their time
shows up in the row of the node they joined. Times are per call, averaged over --calls profiled calls after
one warm-up. The profiler costs ours time of its own: the total without it is printed beside.
"""
import argparse
import collections
import re
import time
import warnings

import torch

import fast

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it from the repository root as a module: python -m benchmarks.layer_profile")

from benchmarks.versus_diffusers import OPENVINO_CONFIG, unet_inputs  # noqa: E402
from tests.parity import random_model  # noqa: E402

ROWS = ("convolution 3×3", "convolution 1×1", "linear", "attention core", "normalisation", "elementwise",
        "layout", "Python and dispatch", "other")
ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "softmax", "baddbmm", "bmm")
NORM_OPS = ("group_norm", "layer_norm")
ELEMENTWISE_OPS = ("silu", "gelu", "add", "mul", "sigmoid", "upsample", "div", "sub", "exp", "sin", "cos")
LAYOUT_OPS = ("copy", "clone", "contiguous", "cat", "stack", "pad", "permute", "transpose", "reshape", "view",
              "split", "chunk", "empty", "expand", "as_strided", "slice", "select", "narrow", "unbind", "t")
MATMUL_OPS = ("addmm", "mm", "matmul", "linear")


def layer_kind(module: torch.nn.Module | None) -> str | None:
    """The row a module's matrix products belong to, from its class: convolution k×k, linear, attention core."""
    if isinstance(module, torch.nn.Conv2d):
        return f"convolution {module.kernel_size[0]}×{module.kernel_size[1]}"
    if isinstance(module, torch.nn.Linear):
        return "linear"
    return None


def torch_row(op: str, module: torch.nn.Module | None) -> str:
    """The row of a torch operator's self time, given the innermost module that called it."""
    op = op.removeprefix("aten::")
    if "convolution" in op:
        return layer_kind(module) or "convolution 3×3"
    if op in MATMUL_OPS:                       # GEGLU's fast form calls F.linear itself: linear, as its proj
        return layer_kind(module) or ("attention core" if hasattr(module, "to_q") else "linear")
    if any(name in op for name in ATTENTION_OPS):
        return "attention core"
    if any(name in op for name in NORM_OPS):
        return "normalisation"
    if any(op.removesuffix("_") == name or op.startswith(name) for name in ELEMENTWISE_OPS):
        return "elementwise"
    if any(op.removesuffix("_") == name or op.startswith(name) for name in LAYOUT_OPS):
        return "layout"
    return "other"


def profile_ours(model: torch.nn.Module, inputs: tuple, calls: int) -> tuple:
    """({row: seconds a call}, {(row, operator): seconds a call}, seconds a call without the profiler)."""
    paths = {module: f"module::{name}" for name, module in model.named_modules()}
    stack = []

    def enter(module, args):
        stack.append(torch.profiler.record_function(paths[module]))
        stack[-1].__enter__()

    def leave(module, args, output):
        stack.pop().__exit__(None, None, None)

    with torch.inference_mode():
        model(*inputs)                                                  # warm up
        start = time.perf_counter()
        model(*inputs)
        plain_seconds = time.perf_counter() - start
        handles = [hook for module in model.modules()
                   for hook in (module.register_forward_pre_hook(enter), module.register_forward_hook(leave))]
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
                for _ in range(calls):
                    model(*inputs)
        finally:
            for handle in handles:
                handle.remove()
    rows, ops = collections.Counter(), collections.Counter()
    modules = {label: model.get_submodule(label.removeprefix("module::")) for label in paths.values()}
    for event in profiler.events():
        seconds = event.self_cpu_time_total / 1e6 / calls
        if event.name.startswith("module::"):
            row, op = "Python and dispatch", "(between operators)"
        else:
            parent = event.cpu_parent
            while parent is not None and not parent.name.startswith("module::"):
                parent = parent.cpu_parent
            module = modules.get(parent.name) if parent is not None else None
            row, op = torch_row(event.name, module), event.name
        rows[row] += seconds
        ops[row, op] += seconds
    return rows, ops, plain_seconds


def openvino_row(node_type: str, module: torch.nn.Module | None, path: str) -> str:
    """The row of an OpenVINO node, from its type and the module it was traced from."""
    in_attention = re.search(r"\.attn\d(\.|$)", path) is not None and layer_kind(module) is None
    if node_type == "Convolution":
        return layer_kind(module) or "convolution 3×3"
    if node_type in ("FullyConnected", "MatMul", "Subgraph", "Softmax", "ScaledDotProductAttention"):
        if in_attention:
            return "attention core"
        if node_type in ("FullyConnected", "MatMul"):
            return layer_kind(module) or "linear"
        return "elementwise"
    if node_type in ("MVN", "GroupNormalization", "NormalizeL2"):
        return "normalisation"
    if node_type in ("Reorder", "Transpose", "Concat", "Reshape", "VariadicSplit", "Split", "Gather", "ShapeOf",
                     "StridedSlice", "Pad", "Broadcast", "Squeeze", "Unsqueeze"):
        return "layout"
    if node_type in ("Parameter", "Result", "Const"):
        return "other"
    return "elementwise"                # Multiply, Add, MulAdd, Gelu, Swish, Interpolate, Eltwise, Convert, …


def profile_openvino(openvino, model: torch.nn.Module, inputs: tuple, calls: int) -> tuple:
    """({row: seconds a call}, {(row, node type/implementation): seconds a call}, seconds a call, convert s)."""
    started = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        converted = openvino.convert_model(model, example_input=tuple(x.clone() for x in inputs))
    convert_seconds = time.perf_counter() - started
    compiled = openvino.compile_model(converted, "CPU", {**OPENVINO_CONFIG, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    arrays = [x.numpy() for x in inputs]
    request.infer(arrays)                                               # warm up
    rows, ops, total = collections.Counter(), collections.Counter(), 0.0
    for _ in range(calls):
        start = time.perf_counter()
        request.infer(arrays)
        total += (time.perf_counter() - start) / calls
        for node in request.get_profiling_info():
            match = re.search(r"__module\.([\w.]+?)/aten::", node.node_name)
            path = match.group(1) if match else ""
            try:
                module = model.get_submodule(path) if path else None
            except AttributeError:
                module = None
            row = openvino_row(node.node_type, module, path)
            seconds = node.real_time.total_seconds() / calls
            rows[row] += seconds
            ops[row, f"{node.node_type} ({node.exec_type})"] += seconds
    return rows, ops, total, convert_seconds


def print_table(columns: dict, totals: dict) -> None:
    names = list(columns)
    print("| row | " + " | ".join(f"{name} ms" for name in names) + " |")
    print("|---|" + "---:|" * len(names))
    for row in ROWS:
        if any(columns[name][0].get(row, 0) > 0.0005 for name in names):
            print(f"| {row} | " + " | ".join(f"{columns[name][0].get(row, 0) * 1000:.0f}" for name in names) + " |")
    print("| **sum of rows** | " + " | ".join(f"**{sum(columns[name][0].values()) * 1000:.0f}**" for name in names)
          + " |")
    print("| call without profiling | " + " | ".join(f"{totals[name] * 1000:.0f}" for name in names) + " |")
    for name in names:
        print(f"\n{name}: the largest entries of each row (ms a call)")
        ops = columns[name][1]
        for row in ROWS:
            top = sorted(((seconds, op) for (r, op), seconds in ops.items() if r == row), reverse=True)[:4]
            if top and top[0][0] > 0.0005:
                print(f"  {row}: " + ", ".join(f"{op} {seconds * 1000:.0f}" for seconds, op in top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=64, help="latent side (default 64)")
    parser.add_argument("--calls", type=int, default=2, help="profiled calls a side (default 2)")
    parser.add_argument("--no-openvino", action="store_true", help="ours only")
    args = parser.parse_args()
    openvino = None
    if not args.no_openvino:
        try:
            import openvino
        except ImportError:
            raise SystemExit("openvino is not installed: pip install -e '.[benchmark]', or pass --no-openvino") \
                from None

    from ldm import UNetModel
    from weights import presets

    spec = presets.get("sd-1.5")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; SD 1.5 UNet, batch 2, {args.side}×{args.side}, float32",
          flush=True)
    inputs = unet_inputs(spec, args.side, torch.device("cpu"), torch.float32)
    model = random_model(UNetModel, spec.unet, seed=0).eval()
    columns, totals = {}, {}
    if openvino is not None:
        rows, ops, totals["OpenVINO"], convert = profile_openvino(openvino, model, inputs, args.calls)
        columns["OpenVINO"] = rows, ops
        print(f"OpenVINO {openvino.__version__}: converted in {convert:.0f} s", flush=True)
    rows, ops, totals["ours, plain"] = profile_ours(model, inputs, args.calls)
    columns["ours, plain"] = rows, ops
    fast.optimize(model, device="cpu", dtype=torch.float32)
    rows, ops, totals["ours, fast"] = profile_ours(model, inputs, args.calls)
    columns["ours, fast"] = rows, ops
    print()
    print_table(columns, totals)


if __name__ == "__main__":
    main()
