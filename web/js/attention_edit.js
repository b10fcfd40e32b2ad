// Attention Edit web extension: shows, on each "Prompt-to-Prompt Edit" node, how its edited prompt aligns with
// the source prompt of the inversion it is used with (word swap or refine, which words change), using the
// server route POST /attention_edit/align (the same alignment code the sampler uses), counted in the tokens the
// model attends to (CLIP; T5 on Flux, found from the sampler's text encoder).
//
// The source prompt is found by following the edit's output through the pack's pass-through nodes (every node
// with an AE_P2P_EDIT input and an AE_P2P_EDIT output: Reweight, Local Blend, AdapEdit DPS ...; the list comes
// from the node definitions) to an Edit Sampler, then its inversion input back through inversion pass-throughs
// (Save Inversion) to Invert Image. A prompt given through a link is resolved where the frontend knows its value
// (a primitive or a Concatenate of known strings); otherwise the display says that it comes from a link instead
// of showing a widget's stale text.
const { app } = window.comfyAPI.app;
const { api } = window.comfyAPI.api;

const EDIT_NODE = "AE_P2PEdit";
const SAMPLER_NODE = "AE_P2PEditSampler";
const INVERT_NODE = "AE_InvertImage";
const LOAD_INVERSION_NODE = "AE_LoadInversion";
const EDIT_TYPE = "AE_P2P_EDIT";
const INVERSION_TYPE = "AE_INVERSION";
// filled from the node definitions as ComfyUI registers them
const EDIT_PASS_THROUGH = new Set();
const INVERSION_PASS_THROUGH = new Set();

function typesOf(nodeData) {
  const inputs = { ...(nodeData?.input?.required ?? {}), ...(nodeData?.input?.optional ?? {}) };
  const ins = Object.values(inputs).map((spec) => (Array.isArray(spec) ? spec[0] : spec));
  return { ins, outs: nodeData?.output ?? [] };
}

function classOf(node) {
  return node?.comfyClass ?? node?.type;
}

function getLink(graph, id) {
  if (id == null || !graph?.links) return null;
  return graph.links[id] ?? graph.links.get?.(id) ?? null;
}

function widgetValue(node, name) {
  const w = node?.widgets?.find((w) => w.name === name);
  return w ? w.value : undefined;
}

// The value of a node's input as the frontend knows it: {value} for a widget or a link from a node whose output is
// known without running the workflow, {from: "<node title>"} for any other link.
function inputValue(node, name, depth = 0) {
  const graph = node.graph ?? app.graph;
  const inp = node.inputs?.find((i) => i.name === name && i.link != null);
  if (!inp) return { value: widgetValue(node, name) };
  const link = getLink(graph, inp.link);
  const src = link && graph.getNodeById(link.origin_id);
  if (!src || depth > 8) return { from: "a link" };
  return outputValue(src, depth + 1);
}

function outputValue(node, depth) {
  const cls = classOf(node);
  const title = node.constructor?.title || cls;
  if (cls === "PrimitiveNode") {
    const v = node.widgets?.[0]?.value;
    return typeof v === "string" ? { value: v } : { from: title };
  }
  if (cls === "PrimitiveString" || cls === "PrimitiveStringMultiline") {
    return inputValue(node, "value", depth);
  }
  if (cls === "StringConcatenate") {
    const parts = ["string_a", "delimiter", "string_b"].map((n) => inputValue(node, n, depth));
    const unknown = parts.find((p) => typeof p.value !== "string");
    if (unknown) return { from: unknown.from && unknown.from !== "a link" ? `${title} ← ${unknown.from}` : title };
    return { value: parts[0].value + parts[1].value + parts[2].value };
  }
  return { from: title };
}

// The Edit Samplers an edit node feeds (through edit pass-throughs), in link order.
function findSamplers(node, depth = 0, found = []) {
  const graph = node.graph ?? app.graph;
  if (!graph || depth > 8) return found;
  for (const out of node.outputs ?? []) {
    for (const linkId of out.links ?? []) {
      const link = getLink(graph, linkId);
      const target = link && graph.getNodeById(link.target_id);
      if (!target) continue;
      const cls = classOf(target);
      if (EDIT_PASS_THROUGH.has(cls)) findSamplers(target, depth + 1, found);
      else if (cls === SAMPLER_NODE) found.push(target);
    }
  }
  return found;
}

// The source prompt of the inversion an edit node is used with: {value}, {from: ...} (it is given through a link
// or stored in a loaded inversion file), or null when the edit reaches no Edit Sampler fed by an inversion.
function findSourcePrompt(node) {
  for (const sampler of findSamplers(node)) {
    const found = inversionPrompt(sampler, "inversion", 1);
    if (found) return found;
  }
  return null;
}

// Which tokens the sampler's text encoder aligns: "t5" for Flux (its attention is indexed by T5 tokens), else
// "clip". Followed from the sampler's clip input through nodes that pass a CLIP through (LoRA loaders, CLIP Set
// Last Layer, ...) to the loader: a CLIP loader whose type is flux, a checkpoint / diffusion model whose file name
// says flux, or the pack's random Flux.1 test model.
function textEncoderOf(node, depth = 0) {
  const graph = node.graph ?? app.graph;
  const inp = node.inputs?.find((i) => i.type === "CLIP" && i.link != null);
  const link = inp && getLink(graph, inp.link);
  const src = link && graph.getNodeById(link.origin_id);
  if (!src || depth > 8) return "clip";
  const type = widgetValue(src, "type");
  // SD3 attends to CLIP and T5 tokens together; its binding limit is CLIP's 75, so it is shown as CLIP
  if (typeof type === "string") return /^flux/i.test(type) ? "t5" : "clip";
  for (const name of ["ckpt_name", "unet_name", "weights"]) {
    const v = widgetValue(src, name);
    if (typeof v === "string") return /flux|mm-?dit/i.test(v) ? "t5" : "clip";
  }
  if (src.inputs?.some((i) => i.type === "CLIP")) return textEncoderOf(src, depth + 1);
  return "clip";
}

function inversionPrompt(node, inputName, depth) {
  const graph = node.graph ?? app.graph;
  const inp = node.inputs?.find((i) => i.name === inputName);
  const link = inp && getLink(graph, inp.link);
  const src = link && graph.getNodeById(link.origin_id);
  if (!src || depth > 8) return null;
  const cls = classOf(src);
  if (cls === INVERT_NODE) return inputValue(src, "source_prompt");
  if (cls === LOAD_INVERSION_NODE) return { from: "the loaded inversion file" };
  if (INVERSION_PASS_THROUGH.has(cls)) {
    const name = src.inputs?.find((i) => i.type === INVERSION_TYPE)?.name;
    return name ? inversionPrompt(src, name, depth + 1) : null;
  }
  return { from: src.constructor?.title || cls };
}

function summarise(edit) {
  if (edit.error) return "⚠ " + edit.error;
  const parts = [edit.mode === "replace" ? "word swap" : "refine"];
  if (edit.swaps?.length) parts.push(edit.swaps.map(([a, b]) => `${a}→${b}`).join(", "));
  if (edit.added?.length) parts.push("+ " + edit.added.join(" "));
  if (edit.removed?.length) parts.push("− " + edit.removed.join(" "));
  parts.push(edit.stream === "T5" ? `${edit.target_tokens}/${edit.limit} T5 tokens` : `${edit.target_tokens}/75 tokens`);
  return parts.join(" · ");
}

function setText(node, text) {
  node.__aeAlignText = text;
  node.setDirtyCanvas?.(true, false);
}

async function refresh(node) {
  const source = findSourcePrompt(node);
  const target = inputValue(node, "edited_prompts");
  const mode = widgetValue(node, "mode") ?? "auto";
  const sampler = findSamplers(node)[0];
  const encoder = sampler ? textEncoderOf(sampler) : "clip";
  const key = JSON.stringify([source, target, mode, encoder]);
  if (key === node.__aeAlignKey) return;
  node.__aeAlignKey = key;
  if (!source) return setText(node, "connect to an Edit Sampler fed by Invert Image to see the alignment");
  if (typeof target.value !== "string") {
    return setText(node, `the edited prompt comes from a link (${target.from}): aligned when the workflow runs`);
  }
  if (typeof source.value !== "string") {
    return setText(node, `the source prompt comes from ${source.from === "the loaded inversion file" ? "" : "a link: "}` +
                         `${source.from}: aligned when the workflow runs`);
  }
  if (!target.value.trim()) return setText(node, "");
  try {
    const resp = await api.fetchApi("/attention_edit/align", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ source: source.value, target: target.value, mode, encoder }),
    });
    const data = await resp.json();
    setText(node, data.error ? "⚠ " + data.error : (data.edits ?? []).map(summarise).join("\n"));
  } catch (e) {
    setText(node, "");
  }
}

app.registerExtension({
  name: "AttentionEdit.AlignmentDisplay",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const { ins, outs } = typesOf(nodeData);
    if (nodeData?.name !== EDIT_NODE && ins.includes(EDIT_TYPE) && outs.includes(EDIT_TYPE)) {
      EDIT_PASS_THROUGH.add(nodeData.name);
    }
    if (ins.includes(INVERSION_TYPE) && outs.includes(INVERSION_TYPE)) INVERSION_PASS_THROUGH.add(nodeData.name);
    if (nodeData?.name !== EDIT_NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.__aeTimer = setInterval(() => refresh(this), 1000);
      return r;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      clearInterval(this.__aeTimer);
      return onRemoved?.apply(this, arguments);
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const r = onDrawForeground?.apply(this, arguments);
      const text = this.__aeAlignText;
      if (text && !this.flags?.collapsed) {
        ctx.save();
        ctx.font = "11px sans-serif";
        ctx.fillStyle = text.startsWith("⚠") ? "#f88" : "#9c9";
        text.split("\n").forEach((line, i) => ctx.fillText(line, 8, this.size[1] + 14 + 13 * i));
        ctx.restore();
      }
      return r;
    };
  },
});
