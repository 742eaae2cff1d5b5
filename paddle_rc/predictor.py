"""The one place that chooses what runs a Predictor: the dynamic model or an exported deployment.

    predictor = build_predictor("ckpt/llava-1.5-7b", method="rc")     # dynamic: any method per call
    predictor = build_predictor(deploy_dir="deploy/llava-rc")          # Paddle Inference graphs
    predictor = build_predictor()                                      # the built-in demo model (trained
                                                                       # on the synthetic task)
    out = predictor.answer(image, "What is on the sofa?")
    outs = predictor.answer_batch(images, questions, max_new_tokens=32)

Layering: this module imports paddle_rc.pipeline (the backend-independent Predictor) and
paddle_rc.export.runner (the deployed backend); neither of those imports the other or this one.
"""
from __future__ import annotations

import os
from typing import Optional

from paddle_rc.errors import UserError
from paddle_rc.pipeline import Predictor, Tokenizers


def build_predictor(model_dir: Optional[str] = None, deploy_dir: Optional[str] = None,
                    method: Optional[str] = None, budget: Optional[int] = None,
                    conv_mode: Optional[str] = None, *, device: str = "cpu", threads: Optional[int] = None,
                    onednn: bool = False, **options) -> Predictor:
    """A Predictor over a converted checkpoint, an exported deployment, or (neither) the built-in demo
    model (paddle_rc.demo.default_model: trained here on the synthetic task).

    method None means: `none` for a checkpoint, the exported one for a deployment. A deployment's
    compression is fixed, so asking it for another method, budget or options is a UserError that
    names the export command (never a silent fallback). device/threads/onednn apply to a deployment.
    """
    if model_dir is not None and deploy_dir is not None:
        raise UserError("give a model directory or a deployment directory, not both")
    if deploy_dir is not None:
        return _deployed(deploy_dir, method, budget, conv_mode, device, threads, onednn, options)
    if method is None and (budget is not None or options):
        raise UserError("a budget or method option needs a method (e.g. method rc)")
    from paddle_rc.demo import default_model, is_demo_config

    if model_dir is None:
        model_dir = default_model()
    elif not os.path.isdir(model_dir):
        raise UserError(f"model directory not found: {model_dir}")
    from paddle_rc.models import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, defer_text=True)
    predictor = Predictor(model, Tokenizers(model_dir), conv_mode,
                          model_id=os.path.basename(os.path.normpath(model_dir)),
                          is_demo=is_demo_config(model.config), kind="dynamic")
    predictor.set_method(method or "none", budget, **options)
    return predictor


def _deployed(deploy_dir, method, budget, conv_mode, device, threads, onednn, options) -> Predictor:
    from paddle_rc.export.runner import FIX, DeployedLlava, RunnerOptions

    from paddle_rc.demo import is_demo_config

    model = DeployedLlava(deploy_dir, RunnerOptions(device=device, threads=threads, onednn=onednn))
    try:
        tokenizers = Tokenizers(deploy_dir)
    except UserError as e:
        raise UserError(f"{e} ({FIX})") from None
    predictor = Predictor(model, tokenizers, conv_mode,
                          model_id="deploy:" + os.path.basename(os.path.normpath(deploy_dir)),
                          is_demo=is_demo_config(model.config), kind="deploy")
    if method is not None or budget is not None or options:
        exported = model.compression
        predictor.set_method(method or exported.method, exported.budget if budget is None else budget,
                             **options)
    return predictor


__all__ = ["build_predictor"]
