"""Static export (Paddle 3.x PIR) and the Paddle Inference runner.

    export_model(model_dir, out_dir, method="rc")         -> manifest (tools/export.py)
    build_deployed_predictor(out_dir)                      -> pipeline.Predictor over the graphs
"""
from paddle_rc.export.exporter import export_model
from paddle_rc.export.runner import DeployedLlava, RunnerOptions, build_deployed_predictor, read_manifest

__all__ = ["export_model", "build_deployed_predictor", "DeployedLlava", "RunnerOptions", "read_manifest"]
