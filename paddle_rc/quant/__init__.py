"""Weight-only int8 / int4 quantization of nn.Linear layers (see docs in each module).

    from paddle_rc.quant import QuantConfig, quantize_model
    report = quantize_model(model, QuantConfig(weight_bits=4, weight_quantize_type="group_wise_abs_max", group_size=128))
"""
from paddle_rc.quant.config import DEFAULT_SKIP, VISION_SKIP, QuantConfig
from paddle_rc.quant import kernel
from paddle_rc.quant.functional import (dequantize_tensor, dequantize_weight, pack_int4,
                                        quantize_weight, unpack_int4, unpack_int4_tensor)
from paddle_rc.quant.layers import WeightOnlyLinear
from paddle_rc.quant.model import QuantReport, prepare_quantized_model, quantize_model, state_dict_bytes

__all__ = ["kernel", "QuantConfig", "DEFAULT_SKIP", "VISION_SKIP", "WeightOnlyLinear", "QuantReport",
           "quantize_model", "prepare_quantized_model", "state_dict_bytes",
           "quantize_weight", "dequantize_weight", "pack_int4",
           "unpack_int4", "unpack_int4_tensor", "dequantize_tensor"]
