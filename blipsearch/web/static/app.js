// The search page: results first by ITC cosine, reordered when ITM reranking is done.
// The address holds the search (?q=, ?like=, filters, ?image= for an open photo), so a search can
// be bookmarked, shared and opened directly. Everything comes from this server's /api.
"use strict";

(() => {
  const PAGE = 40;           // results per page
  const $ = (id) => document.getElementById(id);
  const form = $("search"), q = $("q"), grid = $("grid"), state = $("state"), notice = $("notice");
  const more = $("more"), dialog = $("detail"), queryImage = $("query-image");
  let current = null;        // {kind: "text"|"like"|"upload", ...} the search on screen
  let controller = null;     // aborts the requests of a search that was replaced
  let shown = [];            // hits on screen
  const rerankDepth = Number(document.querySelector("main").dataset.rerankDepth || 16);
  const hasTexts = Number(document.querySelector("main").dataset.texts || 0) > 0;
  const BROWSE = {kind: "browse"};  // no query: the photos most recently added (that pass the filters)

  // -- the address ------------------------------------------------------------------------------
  function filterParams() {
    const params = new URLSearchParams();
    const folder = $("folder").value.trim();
    if (folder) params.append("folder", folder);
    for (const name of ["after", "before", "tag"]) {
      const value = $(name).value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  function searchKey(search) {
    return search ? addressFor(search, null) : "";
  }

  function fromAddress() {
    const params = new URLSearchParams(location.search);
    q.value = params.get("q") || "";
    $("folder").value = params.get("folder") || "";
    for (const name of ["after", "before", "tag"]) $(name).value = params.get(name) || "";
    if (params.get("folder") || params.get("after") || params.get("before") || params.get("tag")) {
      $("filters").open = true;
    }
    const image = params.get("image") ? Number(params.get("image")) : null;
    let search = BROWSE;
    if (params.get("like")) search = {kind: "like", id: Number(params.get("like"))};
    else if (q.value.trim()) search = {kind: "text", text: q.value.trim()};
    if (search && current && searchKey(search) === searchKey(current)) {
      // Only the open photo changed (back or forward): the results on screen stay.
      if (image) openDetail(image, false); else closeDetail();
      return;
    }
    closeDetail();
    if (search !== BROWSE || !notice.textContent) start(search, image);
    else if (image) openDetail(image, false);
  }

  function addressFor(search, image) {
    const params = filterParams();
    if (search && search.kind === "text") params.set("q", search.text);
    if (search && search.kind === "like") params.set("like", String(search.id));
    if (image) params.set("image", String(image));
    const text = params.toString();
    return "/" + (text ? "?" + text : "");
  }

  function remember(search, image, replace) {
    if (!search || search.kind === "upload") return;  // a dropped file can't be put in an address
    const url = addressFor(search, image);
    if (url === location.pathname + location.search) return;
    if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  }

  // -- requests ---------------------------------------------------------------------------------
  async function api(url, options = {}) {
    const response = await fetch(url, {...options, signal: options.signal, credentials: "same-origin"});
    const type = response.headers.get("content-type") || "";
    const body = type.includes("application/json") ? await response.json() : null;
    if (!response.ok) {
      const error = new Error((body && body.error) || `The server answered ${response.status}.`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function say(text) {
    notice.textContent = text || "";
    notice.hidden = !text;
  }

  // -- searching --------------------------------------------------------------------------------
  function start(search, openImage) {
    if (controller) controller.abort();
    controller = new AbortController();
    current = search;
    shown = [];
    grid.replaceChildren();
    more.hidden = true;
    say("");
    const welcome = $("welcome");
    if (welcome) welcome.hidden = search !== BROWSE;
    showQueryImage(search);
    load(search, 0, controller.signal).catch(failed);
    if (openImage) openDetail(openImage, false);
  }

  function failed(error) {
    if (error.name === "AbortError") return;
    state.textContent = "";
    say(error.message);
  }

  function urlFor(search, offset, rerank) {
    const params = filterParams();
    params.set("k", String(PAGE));
    params.set("offset", String(offset));
    if (search.kind === "text") {
      params.set("q", search.text);
      if (!rerank) params.set("no_rerank", "true");
      return "/api/search?" + params;
    }
    if (search.kind === "like") return `/api/images/${search.id}/similar?` + params;
    if (search.kind === "browse") return "/api/images?" + params;
    return "/api/search/image?" + params;
  }

  async function fetchHits(search, offset, rerank, signal) {
    if (search.kind === "upload") {
      return api(urlFor(search, offset, false), {
        method: "POST", body: search.file, signal,
        headers: {"Content-Type": search.file.type || "application/octet-stream"},
      });
    }
    return api(urlFor(search, offset, rerank), {signal});
  }

  async function load(search, offset, signal) {
    const words = search.kind === "text" ? `“${search.text}”` : "this photo";
    state.textContent = offset ? "Loading more…" : search === BROWSE ? "" : `Searching for ${words}…`;
    // Beyond the reranked top, the order is the cosine order whether reranked or not: no ITM needed.
    const reranks = search.kind === "text" && offset < rerankDepth;
    const first = await fetchHits(search, offset, false, signal);
    if (search !== current) return;
    render(first.hits || first.images, offset);
    if (!shown.length) {
      state.textContent = "";
      if (!offset) say(noResults(search));
      return;
    }
    if (!reranks) {
      state.textContent = summary(search, false);
      return;
    }
    state.textContent = `${summary(search, false)} · reranking with BLIP's image-text matching…`;
    state.classList.add("busy");
    try {
      const better = await fetchHits(search, offset, true, signal);
      if (search !== current) return;
      render(better.hits, offset);
      state.textContent = summary(search, true);
    } finally {
      state.classList.remove("busy");
    }
  }

  function summary(search, reranked) {
    const n = shown.length;
    if (search === BROWSE) {
      return filterParams().toString() ? "Photos that pass the filters, the most recently added first"
        : "The most recently added photos";
    }
    const what = search.kind === "text" ? `for “${search.text}”` : "that look like this photo";
    const how = reranked ? `, the best ${Math.min(n, rerankDepth)} reranked by image-text matching` : "";
    return `${n}${more.hidden ? "" : "+"} photo${n === 1 ? "" : "s"} ${what}${how}`;
  }

  function noResults(search) {
    const filtered = filterParams().toString() !== "";
    if (filtered) return "No photo matches these filters: widen the folder, the dates or the tag.";
    return search.kind === "like" ? "No other photo to compare with." : "No photo to show: the library has none yet.";
  }

  function render(hits, offset) {
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.id : null;
    shown = shown.slice(0, offset).concat(hits);
    const items = shown.slice(offset).map(tile);
    if (offset) {
      while (grid.children.length > offset) grid.lastChild.remove();
      grid.append(...items);
    } else {
      grid.replaceChildren(...items);
    }
    more.hidden = hits.length < PAGE;
    if (focused) {
      const again = grid.querySelector(`a[data-id="${focused}"]`);
      if (again) again.focus();
    }
  }

  function tile(hit) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.className = "hit";
    a.href = addressFor(current, hit.id);
    a.dataset.id = String(hit.id);
    a.dataset.rank = String(hit.rank);
    const name = hit.path.split("/").pop();
    a.title = hit.rank ? `${hit.rank}. ${hit.path}` : hit.path;
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = name;
    img.loading = "lazy";
    img.decoding = "async";
    const badge = document.createElement("span");
    badge.className = "score";
    a.append(img);
    if (hit.itc !== undefined) {
      const reranked = hit.itm !== null && hit.itm !== undefined;
      badge.textContent = reranked ? percent(hit.itm) : hit.itc.toFixed(3);
      badge.title = reranked ? `match probability (ITM); score ${hit.score.toFixed(3)}` : "ITC cosine";
      a.append(badge);
    }
    li.append(a);
    return li;
  }

  function percent(p) {
    return p < 0.005 ? "<1%" : p > 0.995 && p < 1 ? ">99%" : `${Math.round(p * 100)}%`;
  }

  function showQueryImage(search) {
    queryImage.replaceChildren();
    queryImage.hidden = search.kind !== "like" && search.kind !== "upload";
    if (queryImage.hidden) return;
    const img = document.createElement("img");
    img.alt = "The photo searched by";
    img.src = search.kind === "like" ? `/api/images/${search.id}/thumbnail` : URL.createObjectURL(search.file);
    const text = document.createElement("span");
    text.textContent = search.kind === "like" ? "Photos like this one" : `Photos like ${search.file.name || "the dropped image"}`;
    queryImage.append(img, text);
  }

  // -- the detail view --------------------------------------------------------------------------
  let detailId = null;       // the photo open in the detail view, while it loads and shows
  let lastDetail = null;     // the last one opened: focus returns to its tile on closing

  async function openDetail(id, push = true) {
    detailId = lastDetail = id;
    const search = current;
    if (push) remember(search, id, false);
    $("detail-name").textContent = `Photo ${id}`;
    $("detail-img").removeAttribute("src");
    $("caption").textContent = "";
    $("answer").textContent = "";
    $("question").value = "";
    $("meta").replaceChildren();
    $("lookup").hidden = true;
    $("heat").checked = false;
    const heatToggle = $("heat-toggle");
    heatToggle.hidden = !(search && search.kind === "text");
    if (search && search.kind === "text") $("heat-query").textContent = search.text;
    $("similar").href = addressFor({kind: "like", id}, null);
    $("original").href = `/api/images/${id}/original`;
    if (!dialog.open) dialog.showModal();
    try {
      const info = await api(`/api/images/${id}`);
      if (detailId !== id) return;
      const name = info.path.split("/").pop();
      $("detail-name").textContent = name;
      $("detail-img").src = info.preview;
      $("detail-img").alt = name;
      $("detail-img").dataset.preview = info.preview;
      facts(info);
    } catch (error) {
      $("detail-name").textContent = error.message;
      return;
    }
    caption(id);
    if (hasTexts) lookup(id);
  }

  function facts(info) {
    const rows = [["File", info.path], ["Size", bytes(info.size) + (info.width ? ` · ${info.width} × ${info.height}` : "")]];
    if (info.taken_at) rows.push(["Taken", when(info.taken_at)]);
    rows.push(["Modified", when(info.modified)]);
    if (info.camera) rows.push(["Camera", info.camera]);
    if (info.tags && info.tags.length) rows.push(["Tags", info.tags.map((t) => t.label).join(", ")]);
    const dl = $("meta");
    for (const [term, value] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dl.append(dt, dd);
    }
  }

  async function caption(id) {
    const target = $("caption");
    target.textContent = "captioning…";
    target.classList.add("busy");
    try {
      const body = await api(`/api/images/${id}/caption`, {method: "POST"});
      if (detailId === id) target.textContent = body.caption;
    } catch (error) {
      if (detailId === id) target.textContent = error.message;
    } finally {
      target.classList.remove("busy");
    }
  }

  async function lookup(id) {
    try {
      const body = await api(`/api/images/${id}/lookup?k=5`);
      if (detailId !== id || !body.texts.length) return;
      const list = $("texts");
      list.replaceChildren(...body.texts.map((t) => {
        const li = document.createElement("li");
        li.textContent = t.text;
        li.title = t.itm === null ? `ITC cosine ${t.itc.toFixed(3)}` : `match probability ${percent(t.itm)}`;
        return li;
      }));
      $("lookup").hidden = false;
    } catch (error) {
      // No text collection in this library (409): nothing to show.
      if (error.status !== 409) console.warn(error.message);
    }
  }

  async function ask(event) {
    event.preventDefault();
    const id = detailId;
    const question = $("question").value.trim();
    if (!question) return;
    const answer = $("answer");
    answer.textContent = "thinking…";
    answer.classList.add("busy");
    try {
      const body = await api(`/api/images/${id}/ask`, {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({question}),
      });
      if (detailId === id) answer.textContent = body.answer;
    } catch (error) {
      if (detailId === id) answer.textContent = error.message;
    } finally {
      answer.classList.remove("busy");
    }
  }

  function toggleHeat() {
    const img = $("detail-img");
    if ($("heat").checked && current && current.kind === "text") {
      img.classList.add("busy");
      img.src = `/api/images/${detailId}/explain?` + new URLSearchParams({q: current.text});
    } else {
      img.src = img.dataset.preview;
    }
  }

  function closeDetail() {
    if (dialog.open) dialog.close();
  }

  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 ** 2) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 ** 2).toFixed(1)} MB`;
  }

  function when(iso) {
    const date = new Date(iso);
    return isNaN(date) ? iso : date.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"});
  }

  // -- keyboard ---------------------------------------------------------------------------------
  function columns() {
    const tiles = grid.querySelectorAll("a.hit");
    if (tiles.length < 2) return 1;
    const top = tiles[0].getBoundingClientRect().top;
    let n = 0;
    for (const t of tiles) { if (Math.abs(t.getBoundingClientRect().top - top) > 2) break; n += 1; }
    return Math.max(1, n);
  }

  function move(event) {
    const tiles = Array.from(grid.querySelectorAll("a.hit"));
    const at = tiles.indexOf(document.activeElement);
    if (at < 0 || dialog.open) return;
    const step = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns()}[event.key];
    if (!step) return;
    event.preventDefault();
    const next = tiles[Math.min(tiles.length - 1, Math.max(0, at + step))];
    next.focus();
    next.scrollIntoView({block: "nearest"});
  }

  // -- dropping an image ------------------------------------------------------------------------
  let dragDepth = 0;
  function hasFile(event) {
    return event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  }

  function searchFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      say(`${file.name} is not an image.`);
      return;
    }
    q.value = "";
    history.pushState(null, "", addressFor(null, null));
    start({kind: "upload", file});
  }

  // -- wiring -----------------------------------------------------------------------------------
  function rerun() {
    // The text typed, else the search on screen (a photo's likes, a dropped image) with new filters.
    const text = q.value.trim();
    const search = text ? {kind: "text", text} : current && current.kind !== "text" ? current : BROWSE;
    remember(search, null, false);
    start(search);
  }
  form.addEventListener("submit", (event) => { event.preventDefault(); rerun(); });
  for (const id of ["after", "before", "tag"]) $(id).addEventListener("change", rerun);
  grid.addEventListener("click", (event) => {
    const a = event.target.closest("a.hit");
    if (!a || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    openDetail(Number(a.dataset.id));
  });
  grid.addEventListener("keydown", move);
  more.addEventListener("click", () => {
    if (current) load(current, shown.length, controller.signal).catch(failed);
  });
  $("close").addEventListener("click", closeDetail);
  dialog.addEventListener("close", () => {
    const id = lastDetail;
    detailId = null;
    if (new URLSearchParams(location.search).has("image")) remember(current, null, true);
    const back = id !== null && grid.querySelector(`a[data-id="${id}"]`);
    if (back) back.focus();
  });
  dialog.addEventListener("click", (event) => { if (event.target === dialog) closeDetail(); });
  $("ask").addEventListener("submit", ask);
  $("heat").addEventListener("change", toggleHeat);
  $("detail-img").addEventListener("load", () => $("detail-img").classList.remove("busy"));
  $("similar").addEventListener("click", (event) => {
    event.preventDefault();
    const search = {kind: "like", id: detailId};
    closeDetail();
    q.value = "";
    remember(search, null, false);
    start(search);
  });
  $("file").addEventListener("change", (event) => searchFile(event.target.files[0]));
  document.addEventListener("dragenter", (event) => {
    if (!hasFile(event)) return;
    dragDepth += 1;
    $("dropzone").hidden = false;
  });
  document.addEventListener("dragover", (event) => { if (hasFile(event)) event.preventDefault(); });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) $("dropzone").hidden = true;
  });
  document.addEventListener("drop", (event) => {
    if (!hasFile(event)) return;
    event.preventDefault();
    dragDepth = 0;
    $("dropzone").hidden = true;
    searchFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== q && !dialog.open
        && !["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) {
      event.preventDefault();
      q.focus();
      q.select();
    }
  });
  window.addEventListener("popstate", fromAddress);

  fromAddress();
})();
