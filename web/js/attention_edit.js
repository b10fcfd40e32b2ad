// Attention Edit web extension: shows, on each "Prompt-to-Prompt Edit" node, how its edited prompt aligns with
// the source prompt of the inversion it is used with (word swap or refine, which words change), using the
// server route POST /attention_edit/align (the same alignment code the sampler uses).
const { app } = window.comfyAPI.app;
const { api } = window.comfyAPI.api;

const EDIT_NODE = "AE_P2PEdit";
const PASS_THROUGH = new Set(["AE_P2PReweight", "AE_P2PLocalBlend"]);

function widgetValue(node, name) {
  const w = node?.widgets?.find((w) => w.name === name);
  return w ? w.value : undefined;
}

// Follows the edit's output through Reweight / Local Blend nodes to an Edit Sampler, then its inversion input
// back to the Invert Image node, and returns that node's source prompt (or null).
function findSourcePrompt(node, depth = 0) {
  const graph = node.graph ?? app.graph;
  if (!graph || depth > 8) return null;
  for (const out of node.outputs ?? []) {
    for (const linkId of out.links ?? []) {
      const link = graph.links[linkId] ?? graph.links.get?.(linkId);
      const target = link && graph.getNodeById(link.target_id);
      if (!target) continue;
      if (PASS_THROUGH.has(target.comfyClass ?? target.type)) {
        const found = findSourcePrompt(target, depth + 1);
        if (found) return found;
      } else if ((target.comfyClass ?? target.type) === "AE_P2PEditSampler") {
        const slot = target.inputs?.findIndex((i) => i.name === "inversion");
        const inLink = slot >= 0 ? graph.links[target.inputs[slot].link] ?? graph.links.get?.(target.inputs[slot].link) : null;
        const inv = inLink && graph.getNodeById(inLink.origin_id);
        const prompt = inv && widgetValue(inv, "source_prompt");
        if (typeof prompt === "string") return prompt;
      }
    }
  }
  return null;
}

function summarise(edit) {
  if (edit.error) return "⚠ " + edit.error;
  const parts = [edit.mode === "replace" ? "word swap" : "refine"];
  if (edit.swaps?.length) parts.push(edit.swaps.map(([a, b]) => `${a}→${b}`).join(", "));
  if (edit.added?.length) parts.push("+ " + edit.added.join(" "));
  if (edit.removed?.length) parts.push("− " + edit.removed.join(" "));
  parts.push(`${edit.target_tokens}/75 tokens`);
  return parts.join(" · ");
}

async function refresh(node) {
  const source = findSourcePrompt(node);
  const target = widgetValue(node, "edited_prompts");
  const mode = widgetValue(node, "mode") ?? "auto";
  const key = JSON.stringify([source, target, mode]);
  if (key === node.__aeAlignKey) return;
  node.__aeAlignKey = key;
  if (!source || !target) {
    node.__aeAlignText = source ? "" : "connect to an Edit Sampler fed by Invert Image to see the alignment";
    node.setDirtyCanvas?.(true, false);
    return;
  }
  try {
    const resp = await api.fetchApi("/attention_edit/align", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ source, target, mode }),
    });
    const data = await resp.json();
    node.__aeAlignText = (data.edits ?? []).map(summarise).join("\n") || data.error || "";
  } catch (e) {
    node.__aeAlignText = "";
  }
  node.setDirtyCanvas?.(true, false);
}

app.registerExtension({
  name: "AttentionEdit.AlignmentDisplay",
  async beforeRegisterNodeDef(nodeType, nodeData) {
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
