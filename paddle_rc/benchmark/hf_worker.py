"""The transformers side of `benchmark.py versus`, run as a separate process by file path.

It never imports paddle_rc (nor Paddle): transformers runs as a user would run it, without
paddle_rc's runtime settings, and the two libraries' OpenMP pools do not share a process. It reads
one JSON command per line on stdin and answers one JSON line on stdout:
    {"cmd": "build", "what": "vision"|"llm", ...shapes}   -> {"ok": true, ...}
    {"cmd": "run", "case": "tower"|"prefill"|"decode"}    -> {"seconds": s}
    {"cmd": "free"} / {"cmd": "quit"}
Random weights (times depend on shapes, not values).
"""
import json
import sys
import time


def _vision(req):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=req["width"], intermediate_size=4 * req["width"],
                           num_hidden_layers=req["layers"], num_attention_heads=req["heads"],
                           image_size=req["image_size"], patch_size=req["patch"], hidden_act="quick_gelu")
    model = CLIPVisionModel(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, req["image_size"], req["image_size"], generator=gen)

    def tower():
        # What LLaVA does: the whole tower with every hidden state, then hidden_states[-2] minus CLS.
        out = model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[-2][:, 1:].sum().item()

    return model, {"tower": tower}


def _llm(req):
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=req["vocab"], hidden_size=req["hidden"], intermediate_size=req["intermediate"],
                      num_hidden_layers=req["layers"], num_attention_heads=req["heads"],
                      num_key_value_heads=req["heads"], max_position_embeddings=4096)
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    seq, steps = req["seq"], req["decode_steps"]
    x = torch.randn(1, seq, req["hidden"], generator=gen) * 0.02
    mask = torch.ones(1, seq, dtype=torch.long)
    state = {}

    def prefill(keep=False):
        cache = DynamicCache()
        out = model(inputs_embeds=x, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
        if keep:
            state["cache"] = out.past_key_values
        return out.logits[0, -1, 0].item()

    def decode():
        cache = state["cache"]
        cache.crop(seq)  # back to the prefill cache, so every repeat decodes the same steps
        m = mask
        tok = torch.tensor([[5]])
        for _ in range(steps):
            m = torch.cat([m, torch.ones(1, 1, dtype=torch.long)], dim=1)
            out = model(input_ids=tok, attention_mask=m, past_key_values=cache, use_cache=True, logits_to_keep=1)
            out.logits[0, -1, 0].item()

    with torch.no_grad():
        prefill(keep=True)
    return model, {"prefill": prefill, "decode": decode}


def main():
    import torch

    cases, model = {}, None
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "quit":
            break
        if cmd == "build":
            torch.set_num_threads(int(req["threads"]))
            import transformers

            with torch.no_grad():
                model, cases = (_vision if req["what"] == "vision" else _llm)(req)
            reply = {"ok": True, "torch": torch.__version__, "transformers": transformers.__version__,
                     "threads": torch.get_num_threads()}
        elif cmd == "run":
            with torch.no_grad():
                t0 = time.perf_counter()
                cases[req["case"]]()
                reply = {"seconds": time.perf_counter() - t0}
        elif cmd == "free":
            model, cases = None, {}
            import gc

            gc.collect()
            reply = {"ok": True}
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
