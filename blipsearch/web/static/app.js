// The search page. A text search answers with a match set: the photos BLIP's image-text matching
// (ITM) says match, under a heading with their count, then the closest that did not match ("More that
// might match"), then on demand the next closest by cosine, which ITM has not checked. `all:no` in the
// box gives the best 40 instead, reranked. One scale on every tile: the match probability where ITM
// scored the photo, no badge where it did not.
// The address holds the box's text (?q=, ?plain=1), a photo's likes (?like=) and an open photo
// (?image=), so a search can be bookmarked, shared and opened directly. The filters panel writes keys
// into the box. Everything comes from this server's /api.
"use strict";

(() => {
  const PAGE = 40;           // photos per page of the top-k and cosine lists
  const $ = (id) => document.getElementById(id);
  const form = $("search"), q = $("q"), results = $("results"), state = $("state"), notice = $("notice");
  const more = $("more"), dialog = $("detail"), queryImage = $("query-image"), plain = $("plain");
  const PANEL = ["folder", "after", "before", "tag", "keyword", "place", "rating", "sort"];  // inputs whose data-key they write into the box
  let current = null;        // the search on screen: {kind: "text"|"browse"|"like"|"upload", ...}
  let controller = null;     // aborts the requests of a search that was replaced
  let shown = [];            // the photos on screen, in order
  let paging = null;         // how "More photos" goes on: {url(offset), offset, badge}
  const rerankDepth = Number(document.querySelector("main").dataset.rerankDepth || 16);
  const hasTexts = Number(document.querySelector("main").dataset.texts || 0) > 0;

  // -- the box's keys -----------------------------------------------------------------------------
  // Tokens as blipsearch.search.language reads them: whitespace-separated, double quotes joining.
  function tokens(text) {
    const found = [];
    const re = /(?:[^\s"]+|"(?:[^"\\]|\\.)*"?)+/g;
    let m;
    while ((m = re.exec(text))) found.push(m[0]);
    return found;
  }

  function quoted(value) {
    return /[\s"]/.test(value) ? `"${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"` : value;
  }

  function withKey(text, key, value) {
    // The box's text with `key:` set to value, where it was (at the end when it wasn't), or taken out
    // when value is empty.
    const head = new RegExp(`^${key}:(?!//)`, "i");
    const put = value ? `${key}:${quoted(value)}` : null;
    const out = [];
    let placed = false;
    for (const t of tokens(text)) {
      if (!head.test(t)) out.push(t);
      else if (!placed && put) { out.push(put); placed = true; }
    }
    if (put && !placed) out.push(put);
    return out.join(" ");
  }

  function boxSays(key, understood) {
    // What the box says for a key of the panel, as the panel would show it.
    if (!understood) return null;
    if (key === "in") return understood.folders.length ? understood.folders[0] : "";
    if (key === "sort") return understood.sort && understood.sort !== "score" ? understood.sort : "";
    if (key === "keyword") return understood.keywords.length ? understood.keywords[0] : "";
    if (key === "rating") return understood.rating === null ? "" : String(understood.rating);
    return understood[key] || "";
  }

  function showPanel(understood) {
    // The panel shows what the box says (a month such as after:2024-06 has no day to show).
    let any = false;
    for (const id of PANEL) {
      const input = $(id), says = boxSays(input.dataset.key, understood);
      input.value = input.type === "date" && !/^\d{4}-\d{2}-\d{2}$/.test(says) ? "" : says;
      any = any || Boolean(says);
    }
    if (any) $("filters").open = true;
  }

  function fromPanel(input) {
    const value = input.value.trim();
    const understood = current && current.box === q.value.trim() ? current.understood : null;
    if (boxSays(input.dataset.key, understood) === value) return;  // the box says so already
    const text = withKey(q.value, input.dataset.key, value);
    if (text === q.value.trim()) return;
    q.value = text;
    rerun();
  }

  // -- the address ------------------------------------------------------------------------------
  function addressFor(search, image) {
    const params = new URLSearchParams();
    if (search && (search.kind === "text" || search.kind === "browse") && search.box) params.set("q", search.box);
    if (search && search.plain) params.set("plain", "1");
    if (search && search.kind === "like") params.set("like", String(search.id));
    if (image) params.set("image", String(image));
    const text = params.toString();
    return "/" + (text ? "?" + text : "");
  }

  function searchFor(box, isPlain) {
    return box ? {kind: "text", box, plain: isPlain} : {kind: "browse", box: "", plain: false};
  }

  function fromAddress() {
    const params = new URLSearchParams(location.search);
    let box = params.get("q") || "";
    // Addresses from before the box had keys: their filters become keys.
    for (const [name, key] of [["folder", "in"], ["after", "after"], ["before", "before"], ["tag", "tag"]]) {
      if (params.get(name)) box = withKey(box, key, params.get(name));
    }
    q.value = box;
    plain.checked = params.get("plain") === "1";
    const image = params.get("image") ? Number(params.get("image")) : null;
    const search = params.get("like") ? {kind: "like", id: Number(params.get("like"))} : searchFor(box.trim(), plain.checked);
    if (current && addressFor(search, null) === addressFor(current, null)) {
      // Only the open photo changed (back or forward): the results on screen stay.
      if (image) openDetail(image, false); else closeDetail();
      return;
    }
    if (["folder", "after", "before", "tag"].some((name) => params.has(name))) {
      history.replaceState(null, "", addressFor(search, image));
    }
    closeDetail();
    if (search.kind !== "browse" || search.box || !notice.textContent) start(search, image);
    else if (image) openDetail(image, false);
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

  function boxParams(search, extra, list = false) {
    // list: the closest by cosine for a match set's page, whatever the box's all: says.
    const params = new URLSearchParams(extra);
    const box = list && !search.plain ? withKey(search.box || "", "all", "") : search.box;
    if (box) params.set("q", box);
    if (search.plain) params.set("plain", "true");
    return params;
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
    paging = null;
    results.replaceChildren();
    more.hidden = true;
    state.textContent = "";
    say("");
    const welcome = $("welcome");
    if (welcome) welcome.hidden = search.kind !== "browse" || Boolean(search.box);
    showQueryImage(search);
    run(search, controller.signal).catch(failed);
    if (openImage) openDetail(openImage, false);
  }

  function failed(error) {
    if (error.name === "AbortError") return;
    state.textContent = "";
    state.classList.remove("busy");
    if (current && current.kind === "like" && error.status === 404) {
      queryImage.hidden = true;
      say(`No photo ${current.id} in this library.`);
      return;
    }
    say(error.message);
  }

  async function run(search, signal) {
    if (search.kind === "text" || search.box) {
      // How the box reads: a key it can't read is a sentence; keys alone narrow a browse.
      const read = await api("/api/query?" + boxParams(search, {}), {signal});
      if (search !== current) return;
      showPanel(read.understood);
      search.understood = read.understood;
      if (!read.searches) search.kind = "browse";
    }
    if (search.kind === "text" && search.understood.all !== false) return matchSet(search, signal);
    if (search.kind === "text") return topK(search, signal);
    return list(search, signal);
  }

  async function matchSet(search, signal) {
    const words = `“${search.understood.text}”`;
    // First the closest by cosine, at once; then the set, when ITM has checked enough of them.
    state.textContent = `Checking the photos closest to ${words} with BLIP's image-text matching…`;
    state.classList.add("busy");
    const closest = await api("/api/search?" + boxParams(search, {k: PAGE, no_rerank: "true"}, true), {signal});
    if (search !== current) return;
    if (!closest.hits.length) {
      state.classList.remove("busy");
      state.textContent = "";
      say(noResults(search));
      return;
    }
    show([{hits: closest.hits}]);
    const found = await api("/api/search?" + boxParams(search, {all: "true"}), {signal});
    if (search !== current) return;
    state.classList.remove("busy");
    const n = found.matches, checked = found.checked;
    const depth = found.stopped === "all" ? `checked all ${checked}` : `checked the ${checked.toLocaleString()} closest`;
    const least = percent(found.min_match);
    const groups = [];
    if (n) {
      const heading = `${n.toLocaleString()} photo${n === 1 ? "" : "s"} match${n === 1 ? "es" : ""} · ${depth}`;
      if (found.sort === "score") groups.push({title: heading, id: "matches", hits: found.hits});
      else {
        groups.push({title: heading, id: "matches", hits: []});
        for (const [month, hits] of byMonth(found.hits)) groups.push({subtitle: month, hits});
      }
      if (found.others.length) groups.push({title: "More that might match", hits: found.others});
      state.textContent = found.stopped === "rule" && found.expected_missed >= 1
        ? `The rest are less likely to match: about ${Math.round(found.expected_missed)} more might, further down.`
        : "";
    } else {
      groups.push({sentence: `Nothing here matches ${words}: BLIP's image-text matching checked the `
        + `${checked.toLocaleString()} closest photo${checked === 1 ? "" : "s"} and gave none ${least} or more. `
        + "The nearest ones are below.", hits: []});
      groups.push({title: "The nearest photos", hits: found.others});
      state.textContent = "";
    }
    show(groups);
    // Further down: the next by cosine, which ITM has not checked.
    const after = checked;
    paging = {
      url: (offset) => "/api/search?" + boxParams(search, {k: PAGE, offset: after + offset, no_rerank: "true"}, true),
      offset: 0, title: "Not checked: the next closest by similarity",
    };
    more.hidden = found.stopped === "all" || checked >= found.searched;
  }

  async function topK(search, signal) {
    const words = `“${search.understood.text}”`;
    state.textContent = `Searching for ${words}…`;
    const url = (offset, rerank) => "/api/search?" + boxParams(search, {k: PAGE, offset, ...(rerank ? {} : {no_rerank: "true"})});
    const first = await api(url(0, false), {signal});
    if (search !== current) return;
    if (!first.hits.length) {
      state.textContent = "";
      say(noResults(search));
      return;
    }
    show([{hits: first.hits}]);
    state.textContent = `${first.hits.length} closest to ${words} · reranking the best ${rerankDepth} with BLIP's image-text matching…`;
    state.classList.add("busy");
    const better = await api(url(0, true), {signal});
    if (search !== current) return;
    state.classList.remove("busy");
    show([{hits: better.hits}]);
    state.textContent = `The best ${Math.min(rerankDepth, better.hits.length)} of the photos closest to ${words}, `
      + "reranked by image-text matching, then the rest by similarity";
    paging = {url: (offset) => url(offset, false), offset: better.hits.length, append: true};
    more.hidden = better.hits.length < PAGE;
  }

  async function list(search, signal) {
    // Browse (most recently added, narrowed by the box's keys) or photos like one.
    const params = boxParams(search, {k: PAGE});
    const url = (offset) => {
      params.set("offset", String(offset));
      if (search.kind === "like") return `/api/images/${search.id}/similar?${params}`;
      if (search.kind === "browse") return `/api/images?${params}`;
      return `/api/search/image?${params}`;
    };
    const body = await fetchList(search, url(0), signal);
    if (search !== current) return;
    const hits = body.hits || body.images;
    if (!hits.length) {
      say(noResults(search));
      return;
    }
    show([{hits}]);
    const pending = queryImage.querySelector("img[data-src]");
    if (pending) pending.src = pending.dataset.src;
    state.textContent = search.kind === "browse"
      ? (search.box ? "Photos that pass the filters, the most recently added first" : "The most recently added photos")
      : "The photos that look like this photo, most alike first";
    paging = {url, offset: hits.length, append: true, upload: search.kind === "upload"};
    more.hidden = hits.length < PAGE;
  }

  function fetchList(search, url, signal) {
    if (search.kind !== "upload") return api(url, {signal});
    return api(url, {method: "POST", body: search.file, signal,
                     headers: {"Content-Type": search.file.type || "application/octet-stream"}});
  }

  async function loadMore() {
    if (!paging || !current) return;
    const search = current, signal = controller.signal;
    more.disabled = true;
    try {
      const body = await fetchList(search, paging.url(paging.offset), signal);
      if (search !== current) return;
      const seen = new Set(shown.map((h) => h.id));
      const hits = (body.hits || body.images).filter((h) => !seen.has(h.id));
      const got = (body.hits || body.images).length;
      paging.offset += got;
      if (paging.append) appendTo(results.lastElementChild, hits);
      else {
        if (!paging.section) paging.section = section({title: paging.title, hits: []});
        appendTo(paging.section, hits);
      }
      more.hidden = got < PAGE;
    } catch (error) {
      failed(error);
    } finally {
      more.disabled = false;
    }
  }

  function noResults(search) {
    if (search.kind === "like") return "No other photo to compare with.";
    const u = search.understood;
    const narrowed = u && (u.folders.length || u.after || u.before || u.tag || u.camera || u.min_size || u.formats.length ||
      (u.keywords && u.keywords.length) || u.rating != null || u.label || u.place || u.near);
    if (narrowed) return "No photo passes these filters: widen the folder, the dates or the other keys.";
    return "No photo to show: the library has none yet.";
  }

  function byMonth(hits) {
    const groups = new Map();
    for (const hit of hits) {
      const date = hit.date ? new Date(hit.date) : null;
      const month = date && !isNaN(date) ? date.toLocaleDateString(undefined, {year: "numeric", month: "long"}) : "No date";
      if (!groups.has(month)) groups.set(month, []);
      groups.get(month).push(hit);
    }
    return groups;
  }

  // -- drawing ----------------------------------------------------------------------------------
  function show(groups) {
    const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.id : null;
    shown = [];
    results.replaceChildren();
    for (const group of groups) section(group);
    if (focused) {
      const again = results.querySelector(`a.hit[data-id="${focused}"]`);
      if (again) again.focus();
    }
  }

  function section(group) {
    const part = document.createElement("section");
    part.className = "group";
    if (group.id) part.id = group.id;
    if (group.title || group.subtitle) {
      const h = document.createElement(group.title ? "h2" : "h3");
      h.textContent = group.title || group.subtitle;
      part.append(h);
    }
    if (group.sentence) {
      const p = document.createElement("p");
      p.className = "nothing";
      p.textContent = group.sentence;
      part.append(p);
    }
    if (group.hits.length || !group.sentence) {
      const ol = document.createElement("ol");
      ol.className = "grid";
      part.append(ol);
      appendTo(part, group.hits);
    }
    results.append(part);
    return part;
  }

  function appendTo(part, hits) {
    let ol = part.querySelector("ol.grid");
    if (!ol) {
      ol = document.createElement("ol");
      ol.className = "grid";
      part.append(ol);
    }
    ol.append(...hits.map(tile));
    shown = shown.concat(hits);
  }

  function tile(hit) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.className = "hit";
    a.href = addressFor(current, hit.id);
    a.dataset.id = String(hit.id);
    const name = hit.path.split("/").pop();
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = name;
    img.loading = "lazy";
    img.decoding = "async";
    a.append(img);
    const scored = hit.itm !== null && hit.itm !== undefined;
    const facts = [hit.path];
    if (hit.date) facts.push(`taken ${when(hit.date)}`);
    if (scored) {
      const badge = document.createElement("span");
      badge.className = "score";
      badge.textContent = percent(hit.itm);
      badge.title = "The probability that the photo matches, by BLIP's image-text matching";
      a.append(badge);
      facts.push(`match ${percent(hit.itm)}`);
    } else if (hit.itc !== undefined) {
      facts.push(`not checked by image-text matching; similarity ${hit.itc.toFixed(3)}`);
    }
    a.title = facts.join("\n");
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
    // A photo of the library shows once its likes came back: an id it doesn't have shows no broken image.
    if (search.kind === "upload") img.src = URL.createObjectURL(search.file);
    else img.dataset.src = `/api/images/${search.id}/thumbnail`;
    const text = document.createElement("span");
    text.textContent = search.kind === "like" ? "Photos like this one" : `Photos like ${search.file.name || "the dropped image"}`;
    queryImage.append(img, text);
  }

  // -- the detail view --------------------------------------------------------------------------
  let detailId = null;       // the photo open in the detail view, while it loads and shows
  let lastDetail = null;     // the last one opened: focus returns to its tile on closing
  let pushedDetail = false;  // opening it added a history entry: closing it goes back over that entry
  const PREVIEW = 1600;      // the longest side of /preview: a smaller photo is shown as it is
  const SHOWN_AS_IS = /\.(jpe?g|png|gif|webp)$/i;  // formats every browser shows

  async function openDetail(id, push = true) {
    detailId = lastDetail = id;
    const search = current;
    if (push) remember(search, id, false);
    pushedDetail = push;
    $("detail-name").textContent = `Photo ${id}`;
    $("detail-img").removeAttribute("src");
    $("caption").textContent = "";
    $("answer").textContent = "";
    $("question").value = "";
    $("meta").replaceChildren();
    $("lookup").hidden = true;
    $("heat").checked = false;
    $("heat-legend").hidden = true;
    const text = search && search.kind === "text" ? (search.understood ? search.understood.text : search.box) : null;
    $("heat-toggle").hidden = !text;
    if (text) $("heat-query").textContent = text;
    $("similar").href = addressFor({kind: "like", id}, null);
    $("original").href = `/api/images/${id}/original`;
    if (!dialog.open) dialog.showModal();
    try {
      const info = await api(`/api/images/${id}`);
      if (detailId !== id) return;
      const name = info.path.split("/").pop();
      const small = info.width && Math.max(info.width, info.height) < PREVIEW && SHOWN_AS_IS.test(info.path);
      const picture = small ? info.original : info.preview;  // the file itself rather than a re-encoding
      $("detail-name").textContent = name;
      $("detail-img").src = picture;
      $("detail-img").alt = name;
      $("detail-img").dataset.preview = picture;
      facts(info);
    } catch (error) {
      if (detailId !== id) return;
      // No such photo (an old address, a photo removed since): say so, rather than an empty view.
      pushedDetail = false;
      closeDetail();
      say(error.status === 404 ? `No photo ${id} in this library.` : error.message);
      return;
    }
    caption(id);
    if (hasTexts) lookup(id);
  }

  function facts(info) {
    const rows = [["File", info.path], ["Size", bytes(info.size) + (info.width ? ` · ${info.width} × ${info.height}` : "")]];
    // The capture time as the photo says it (its own clock, offset and source), not this browser's zone.
    rows.push(["Date", info.taken]);
    if (info.taken_at) rows.push(["Modified", when(info.modified)]);
    if (info.title) rows.push(["Title", info.title]);
    if (info.description) rows.push(["Description", info.description]);
    if (info.keywords && info.keywords.length) rows.push(["Keywords", info.keywords.join(", ")]);
    if (info.rating != null) {
      rows.push(["Rating", info.rating < 0 ? "rejected" : "★".repeat(info.rating) + "☆".repeat(5 - info.rating)]);
    }
    if (info.label) rows.push(["Label", info.label]);
    if (info.place && info.place.name) rows.push(["Place", info.place.name]);
    if (info.latitude != null && info.longitude != null) {
      rows.push(["Position", `${info.latitude.toFixed(6)}, ${info.longitude.toFixed(6)}`]);
    }
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

  async function toggleHeat() {
    const img = $("detail-img"), legend = $("heat-legend"), id = detailId;
    const text = $("heat-query").textContent;
    if (!$("heat").checked || !text) {
      legend.hidden = true;
      img.src = img.dataset.preview;
      return;
    }
    img.classList.add("busy");
    try {
      const response = await fetch(`/api/images/${id}/explain?` + new URLSearchParams({q: text}),
                                   {credentials: "same-origin"});
      if (!response.ok) throw new Error((await response.json()).error);
      const picture = URL.createObjectURL(await response.blob());
      if (detailId !== id || !$("heat").checked) return;
      img.src = picture;
      const p = Number(response.headers.get("x-match-probability"));
      $("heat-match").textContent = `match ${percent(p)} ·`;
      $("heat-match").title = "The probability that the photo matches the text, by BLIP's image-text matching";
      legend.hidden = false;
    } catch (error) {
      img.classList.remove("busy");
      $("heat").checked = false;
      if (detailId === id) $("answer").textContent = error.message;
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
  function move(event) {
    // Left and right go through the photos in order; up and down to the nearest photo in the row
    // above or below, across the headings between groups.
    const tiles = Array.from(results.querySelectorAll("a.hit"));
    const at = tiles.indexOf(document.activeElement);
    if (at < 0 || dialog.open) return;
    let next = null;
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      next = tiles[Math.min(tiles.length - 1, Math.max(0, at + (event.key === "ArrowRight" ? 1 : -1)))];
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      const down = event.key === "ArrowDown";
      const here = tiles[at].getBoundingClientRect();
      const middle = here.left + here.width / 2;
      const rows = tiles.map((t) => t.getBoundingClientRect())
        .map((r, i) => ({i, r})).filter(({r}) => (down ? r.top > here.top + 2 : r.top < here.top - 2));
      if (rows.length) {
        const row = down ? Math.min(...rows.map(({r}) => r.top)) : Math.max(...rows.map(({r}) => r.top));
        const inRow = rows.filter(({r}) => Math.abs(r.top - row) <= 2);
        inRow.sort((a, b) => Math.abs(a.r.left + a.r.width / 2 - middle) - Math.abs(b.r.left + b.r.width / 2 - middle));
        next = tiles[inRow[0].i];
      }
    } else {
      return;
    }
    event.preventDefault();
    if (!next) return;
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
    // The box's text, else the search on screen (a photo's likes, a dropped image), else browsing.
    const box = q.value.trim();
    const search = box || !current || current.kind === "text" || current.kind === "browse"
      ? searchFor(box, plain.checked) : current;
    remember(search, null, false);
    start(search);
  }
  form.addEventListener("submit", (event) => { event.preventDefault(); rerun(); });
  q.addEventListener("keydown", (event) => {
    // ArrowDown from the box goes into the results.
    const first = results.querySelector("a.hit");
    if (event.key !== "ArrowDown" || !first) return;
    event.preventDefault();
    first.focus();
    first.scrollIntoView({block: "nearest"});
  });
  for (const id of PANEL) $(id).addEventListener("change", (event) => fromPanel(event.target));
  $("folder").addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    fromPanel(event.target);
  });
  plain.addEventListener("change", rerun);
  results.addEventListener("click", (event) => {
    const a = event.target.closest("a.hit");
    if (!a || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    openDetail(Number(a.dataset.id));
  });
  results.addEventListener("keydown", move);
  more.addEventListener("click", loadMore);
  $("close").addEventListener("click", closeDetail);
  dialog.addEventListener("close", () => {
    const id = lastDetail;
    detailId = null;
    if (new URLSearchParams(location.search).has("image")) {
      // Opened by a click: back over its history entry, so that Back then leaves the search.
      if (pushedDetail) history.back(); else remember(current, null, true);
    }
    pushedDetail = false;
    const back = id !== null && results.querySelector(`a.hit[data-id="${id}"]`);
    if (back) back.focus();
  });
  dialog.addEventListener("click", (event) => { if (event.target === dialog) closeDetail(); });
  const help = $("help");
  $("help-open").addEventListener("click", () => help.showModal());
  $("help-close").addEventListener("click", () => help.close());
  help.addEventListener("click", (event) => { if (event.target === help) help.close(); });
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
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (typing || dialog.open || help.open) return;
    if (event.key === "/") {
      event.preventDefault();
      q.focus();
      q.select();
    } else if (event.key === "?") {
      event.preventDefault();
      help.showModal();
    }
  });
  window.addEventListener("popstate", fromAddress);

  fromAddress();
})();
