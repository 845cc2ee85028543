// textguide page: plain JS, no build step, nothing fetched but this server's own API.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { guide: null, info: null, history: [], outfit: [], titles: {}, timer: null, seq: 0 };

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const d = data.detail;
    throw new Error(Array.isArray(d) ? d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ")
                                     : (d || `HTTP ${res.status}`));
  }
  return data;
}

function setStatus(id, text, isError) {
  const el = $(id);
  el.textContent = text || "";
  el.classList.toggle("error", !!isError);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function describe(item) {
  const parts = [item.category, item.brand, item.colour || item.color,
                 item.price !== undefined && item.price !== null ? `${item.price}` : null, item.id];
  return parts.filter((p) => p !== undefined && p !== null && `${p}` !== "").join(" · ");
}

// one list of hits; coupons have no title and no actions
function renderHits(listId, data, opts = {}) {
  const list = $(listId);
  list.replaceChildren();
  data.ids.forEach((id, i) => {
    const item = data.items[i] || { id };
    if (item.title) state.titles[id] = item.title;
    const li = el("li", "hit");
    li.dataset.id = id;
    li.append(el("span", "title", item.title || id), el("span", "score", data.scores[i].toFixed(3)));
    li.append(el("span", "meta", opts.coupon ? `${item.items} products · ${id}` : describe(item)));
    if (!opts.coupon) {
      const actions = el("span", "actions");
      const h = el("button", "add-history", "+ history");
      h.type = "button";
      h.onclick = (ev) => { ev.stopPropagation(); addTo("history", id); };
      const o = el("button", "add-outfit", "+ outfit");
      o.type = "button";
      o.onclick = (ev) => { ev.stopPropagation(); addTo("outfit", id); };
      actions.append(h, o);
      li.append(actions);
      li.onclick = () => showSimilar(id, li);
    }
    list.append(li);
  });
  const badge = $(opts.badge || "");
  if (badge) badge.textContent = data.method;
}

async function runSearch() {
  const q = $("q").value;
  const seq = ++state.seq;  // answers to older keystrokes are dropped
  if (!q.trim()) { $("results").replaceChildren(); setStatus("search-status", ""); return; }
  try {
    const data = await api(`/guides/${encodeURIComponent(state.guide)}/search`, { query: q, k: 12 });
    if (seq !== state.seq) return;
    renderHits("results", data);
    setStatus("search-status", `${data.ids.length} results`);
  } catch (e) { if (seq === state.seq) setStatus("search-status", e.message, true); }
}

async function showSimilar(id, li) {
  document.querySelectorAll(".hit.selected").forEach((n) => n.classList.remove("selected"));
  if (li) li.classList.add("selected");
  try {
    const data = await api(`/guides/${encodeURIComponent(state.guide)}/similar`, { item_id: id, k: 8 });
    renderHits("similar", data, { badge: "similar-method" });
    setStatus("similar-status", `similar to ${state.titles[id] || id}`);
  } catch (e) { setStatus("similar-status", e.message, true); }
}

function renderChips(kind) {
  const box = $(kind);
  box.replaceChildren();
  state[kind].forEach((id) => {
    const chip = el("span", "chip");
    chip.append(el("span", null, state.titles[id] || id));
    const x = el("button", null, "×");
    x.type = "button";
    x.title = "remove";
    x.onclick = () => { state[kind] = state[kind].filter((v) => v !== id); changed(kind); };
    chip.append(x);
    box.append(chip);
  });
}

function addTo(kind, id) {
  if (!state[kind].includes(id)) state[kind].push(id);
  changed(kind);
}

function changed(kind) {
  renderChips(kind);
  if (kind === "history") runRecommend(); else runOutfit();
}

async function runRecommend() {
  if (!state.history.length) { $("recommend").replaceChildren(); setStatus("recommend-status", "Add products with + history."); return; }
  try {
    const data = await api(`/guides/${encodeURIComponent(state.guide)}/recommend`,
                           { history: state.history, k: 8, on_unknown: "skip" });
    renderHits("recommend", data, { badge: "recommend-method" });
    setStatus("recommend-status", `${state.history.length} items in the history`);
  } catch (e) { setStatus("recommend-status", e.message, true); }
}

async function runOutfit() {
  if (!state.outfit.length) { $("complete").replaceChildren(); setStatus("outfit-status", "Add products with + outfit."); return; }
  const slot = $("slot").value || null;
  try {
    const data = await api(`/guides/${encodeURIComponent(state.guide)}/complete_outfit`,
                           { items: state.outfit, k: 8, slot, on_unknown: "skip" });
    renderHits("complete", data, { badge: "outfit-method" });
    setStatus("outfit-status", slot ? `best ${slot} for these ${state.outfit.length} items` : "");
  } catch (e) { setStatus("outfit-status", e.message, true); }
}

async function runCoupons(ev) {
  if (ev) ev.preventDefault();
  const profile = {};
  new FormData($("profile")).forEach((v, k) => { if (`${v}`.trim()) profile[k] = `${v}`.trim(); });
  try {
    const data = await api(`/guides/${encodeURIComponent(state.guide)}/rank_coupons`,
                           { history: state.history, profile, on_unknown: "skip" });
    data.ids = data.ids.slice(0, 10); data.scores = data.scores.slice(0, 10); data.items = data.items.slice(0, 10);
    renderHits("coupons", data, { coupon: true, badge: "coupon-method" });
    setStatus("coupon-status", "P(redeem), highest first");
  } catch (e) { setStatus("coupon-status", e.message, true); }
}

async function pickGuide(name) {
  state.guide = name;
  state.history = []; state.outfit = [];
  ["results", "similar", "recommend", "complete", "coupons"].forEach((id) => $(id).replaceChildren());
  ["similar-method", "recommend-method", "outfit-method", "coupon-method"].forEach((id) => { $(id).textContent = ""; });
  renderChips("history"); renderChips("outfit");
  const info = await api(`/guides/${encodeURIComponent(name)}`);
  state.info = info;
  const tasks = info.adapter ? info.adapter.tasks.join(", ") : "text similarity only";
  $("guide-info").textContent = `${info.items.toLocaleString()} items · ${tasks}`;
  const slot = $("slot");
  slot.replaceChildren(el("option", null, "any"));
  slot.firstChild.value = "";
  (info.slots || []).forEach((s) => { const o = el("option", null, s); o.value = s; slot.append(o); });
  $("coupon-panel").hidden = !info.coupons;
  if ($("q").value.trim()) runSearch();
}

async function init() {
  const guides = await api("/guides");
  const sel = $("guide");
  guides.forEach((g) => { const o = el("option", null, `${g.name} (${g.items.toLocaleString()})`); o.value = g.name; sel.append(o); });
  sel.onchange = () => pickGuide(sel.value);
  $("q").addEventListener("input", () => { clearTimeout(state.timer); state.timer = setTimeout(runSearch, 150); });
  $("slot").onchange = runOutfit;
  $("profile").addEventListener("submit", runCoupons);
  const wanted = new URLSearchParams(location.search).get("guide");
  if (wanted && guides.some((g) => g.name === wanted)) sel.value = wanted;
  if (guides.length) await pickGuide(sel.value);
  document.body.dataset.ready = "1";
}

init().catch((e) => setStatus("search-status", e.message, true));
