"""Static export (Paddle 3.x PIR) and the Paddle Inference runner.

    export_model(model_dir, out_dir, method="rc")         -> manifest (tools/export.py)
    DeployedLlava(out_dir)                                 -> the model interface over the graphs
    (a Predictor over it: paddle_rc.predictor.build_predictor(deploy_dir=out_dir))
"""
from paddle_rc.export.exporter import export_model
from paddle_rc.export.runner import DeployedLlava, RunnerOptions, read_manifest

__all__ = ["export_model", "DeployedLlava", "RunnerOptions", "read_manifest"]
