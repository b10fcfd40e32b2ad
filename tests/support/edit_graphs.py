"""API-format graphs the MM-DiT node tests share (tests/test_flux.py, tests/test_sd3.py): photo -> Invert Image ->
Save Inversion, Prompt-to-Prompt Edit -> Edit Sampler -> VAE Decode and the attention-map preview, on one of the
ToyWorld loader's models; and the same edit replayed from the saved file."""
from __future__ import annotations


def edit_graph(weights: str, image: str, source: str, method: str, cfg: float, blocks: str, prefix: str) -> dict:
    """The graph (node ids "1"-"9": loader, photo, VAE Encode, Invert Image (4 steps), Save Inversion, P2P Edit
    'a photo of a dog', Edit Sampler, VAE Decode, preview of the edited prompt's maps)."""
    return {
        "1": {"class_type": "AE_ToyWorldLoader", "inputs": {"weights": weights, "seed": 0}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "AE_InvertImage", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "latent": ["3", 0], "source_prompt": source, "method": method,
            "steps": 4, "cfg": cfg, "scheduler": "p2p_ddim", "num_inner_steps": 1, "early_stop_epsilon": 1e-5,
            "learning_rate": 0.01}},
        "5": {"class_type": "AE_SaveInversion", "inputs": {"inversion": ["4", 0], "filename_prefix": prefix}},
        "6": {"class_type": "AE_P2PEdit", "inputs": {"edited_prompts": "a photo of a dog", "mode": "auto",
                                                     "cross_replace_steps": "0.8", "self_replace_steps": "0.4",
                                                     "self_replace_max_resolution": "1/4 (16x16 at 512px)",
                                                     "flux_blocks": blocks}},
        "7": {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                            "inversion": ["4", 0], "edit": ["6", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "AE_AttentionMapPreview", "inputs": {"attention": ["7", 3], "prompt_index": 1,
                                                                 "cell_size": 32}},
    }


def reload_graph(graph: dict, saved: str) -> dict:
    """The loader and the edit of *graph*, with the inversion loaded from the file *saved* (Load Inversion "10")
    into another Edit Sampler ("11")."""
    g = {k: v for k, v in graph.items() if k in ("1", "6")}
    g["10"] = {"class_type": "AE_LoadInversion", "inputs": {"file": saved}}
    g["11"] = {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                             "inversion": ["10", 0], "edit": ["6", 0]}}
    return g
