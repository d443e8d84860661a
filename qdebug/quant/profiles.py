"""Vendor profiles as data: where a given NPU quantizes, which ops it fuses, which it computes in float16.

See docs/simulator.md for how each profile maps to what the vendor compilers do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qdebug.errors import QDebugError


@dataclass(frozen=True)
class Profile:
    """Where quantization happens for one NPU family.

    quantize_at: "output" = every quantized op's output tensor is stored in int (RKNN, generic);
                 "input"  = every layer quantizes its own non-constant inputs with its own record
                            (HiSilicon ATC's calibration_param.txt describes inputs).
    fuse:        apply NPU fusions first (Conv+act, Conv+const Mul/Div, x*sigmoid(x)).
    float16_ops: op types the NPU computes in float16 after dequantizing its (quantized) inputs.
    int16_weight_bits: weight bits of an op promoted to int16 (RKNN int16 = 16; HiSilicon A16W8 = 8).
    quantize_graph_inputs: the model input is quantized (image u8) before the first layer.
    softmax_output: "pow2" = fixed step 1/2^bits with 0 at qmin (onnxruntime QDQ, NNAPI, TFLite);
                    "full" = fixed step 1/(2^bits - 1), 1.0 exact; "calib" = calibrated like any tensor.
    softmax_input_bits: the tensor a Softmax reads is quantized at least this wide (8 = as its producer).
    embedding_weights: "row" = a Gather table quantized per row (per token), "tensor" = one scale.
    sigmoid_input_clip: c > 0 = the range a standalone Sigmoid reads is clamped to [-c, c] and the clamp is
                    carried up to the Concat inputs and sliced tensors that feed it (rknn-toolkit2: c = 7,
                    read from its step-1 .quantization.cfg, docs/rknn.md); 0 = calibrated like any tensor.
    hardsigmoid_input_clip: a HardSigmoid's input is clamped the same way to its linear region
                    [-beta/alpha, (1-beta)/alpha] (rknn-toolkit2: [-2.5, 2.5] for alpha 0.2, [-3, 3] for 1/6).
    asymmetric_weights: weights get a zero point per channel (rknn-toolkit2's simulator reproduces to 86-98 dB
                    only with asymmetric per-channel int8 weights); False = the scheme's choice (symmetric).
    int16_unsupported: op patterns the vendor toolkit cannot build at int16, "OpType" or "OpType@const0" (input 0
                    is a constant); a promotion of such an op is written as float16 instead, before any build
                    (rknn-toolkit2 2.5.0: Sub(constant, x) has no int16 kernel, docs/rknn.md).
    requantized_passthrough: passthrough op types whose outputs the vendor puts on their own calibrated grid,
                    rounded again from the input's grid (rknn-toolkit2: each Split part, read from its simulator
                    dumps, fixtures/text/rknn/nudenet_320n_split_requant.txt); others carry the input's grid.
    """

    name: str
    quantize_at: str = "output"
    fuse: bool = True
    float16_ops: frozenset[str] = frozenset()
    int16_weight_bits: int = 16
    quantize_graph_inputs: bool = True
    softmax_output: str = "pow2"
    softmax_input_bits: int = 8
    embedding_weights: str = "row"
    sigmoid_input_clip: float = 0.0
    hardsigmoid_input_clip: bool = False
    asymmetric_weights: bool = False
    int16_unsupported: frozenset[str] = frozenset()
    requantized_passthrough: frozenset[str] = frozenset()
    description: str = ""


PROFILES: dict[str, Profile] = {}


def register_profile(p: Profile) -> Profile:
    """Add a profile to the registry (a new NPU family is one call here)."""
    PROFILES[p.name] = p
    return p


register_profile(Profile(
    "generic", quantize_at="output", fuse=True,
    description="int8 at every fused op's output, per-channel int8 weights (typical NPU compiler)"))
register_profile(Profile(
    "ort", quantize_at="output", fuse=False, softmax_output="pow2", embedding_weights="tensor",
    description="QDQ at every ONNX op boundary, like onnxruntime quantize_static (overstates NPU error)"))
register_profile(Profile(
    "rknn", quantize_at="output", fuse=True, int16_weight_bits=16, softmax_output="calib",
    embedding_weights="tensor", sigmoid_input_clip=7.0, hardsigmoid_input_clip=True,
    asymmetric_weights=True, int16_unsupported=frozenset({"Sub@const0"}), requantized_passthrough=frozenset({"Split"}),
    description="rknn-toolkit2: Conv+SiLU -> exSwish, const Mul folded, Reshape/MaxPool keep input qparams, Split "
                "parts requantized to their own range, Sigmoid inputs clamped to [-7, 7] (HardSigmoid: its linear "
                "region), asymmetric per-channel weights"))
register_profile(Profile(
    "hisi", quantize_at="input", fuse=True, int16_weight_bits=8, softmax_output="calib",
    embedding_weights="tensor",
    float16_ops=frozenset({"Add", "Sub", "Mul", "Div", "Sigmoid", "Softmax", "Pow", "Sqrt", "Exp",
                           "Log", "Tanh", "ReduceMean", "ReduceSum", "Reciprocal", "Erf",
                           "LayerNormalization", "RMSNormalization", "Gelu"}),
    description="HiSilicon ATC: layers quantize their inputs (S8/S16 records); eltwise/activation in F16"))


def int16_unsupported(profile: Profile, op_type: str, const_inputs: Sequence[bool]) -> str | None:
    """The profile's pattern that rules out int16 for this op (None when int16 is fine); `const_inputs[k]` says
    whether input k is a constant (shape math included), so the rule needs no graph."""
    for pat in sorted(profile.int16_unsupported):
        op, _, where = pat.partition("@")
        if op != op_type:
            continue
        if not where or (where.startswith("const") and int(where[5:]) < len(const_inputs)
                         and const_inputs[int(where[5:])]):
            return pat
    return None


def get_profile(name: str) -> Profile:
    """Look up a profile by name with a clear error listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise QDebugError(f"unknown profile '{name}'", where="--profile",
                          fix=f"use one of: {', '.join(sorted(PROFILES))}") from None
