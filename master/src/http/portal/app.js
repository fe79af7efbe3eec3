// Huatuo operator portal: a single page in plain JavaScript (no framework, no build step, nothing fetched
// from elsewhere). It reads the master's REST API under /api/v1 on the same origin, sends the operator's
// bearer token (kept in sessionStorage) on every request, and keeps a local copy of the object list current
// from the NDJSON watch stream (reconnecting from the last revision + 1), so pages update live. Pages are hash
// routes: #/ fleet, #/objects search, #/object/<id>, #/host/<host>, #/proposals, #/safety, #/agents,
// #/checkers, #/network, #/events, #/fsm/<kind>, #/login. The DOM is built with createElement/textContent only: nothing from the
// server is ever parsed as HTML.
'use strict';
(() => {
  const API = '/api/v1';
  const TOKEN_KEY = 'huatuo.token';
  const NAME_KEY = 'huatuo.operator';
  // The master's MAX_LIST: one list call returns at most this many objects.
  const LIST_LIMIT = 10000;
  // Watch long-poll length; the master caps it at 300 s and ends the stream with a progress line.
  const WATCH_TIMEOUT_MS = 55000;
  // Reconnect backoff of the watch stream: doubles from MIN to MAX while the master is unreachable.
  const WATCH_BACKOFF_MIN_MS = 500;
  const WATCH_BACKOFF_MAX_MS = 15000;
  // Longest NDJSON line accepted (events are small; a longer line means a broken stream: reconnect).
  const MAX_LINE_BYTES = 1 << 20;
  // Cluster, safety, proposals and agents are not in the watch stream: refreshed this often.
  const POLL_MS = 5000;
  // Changes kept in the live feed.
  const FEED_MAX = 300;
  // Rows drawn in one table (the rest is counted, not drawn: a laptop page stays responsive).
  const TABLE_MAX = 500;
  // Objects of one host whose history the host view fetches, and how many fetches run at once.
  const HOST_DETAIL_MAX = 60;
  const FETCH_CONCURRENCY = 4;
  // Least time between two refreshes of the polled data triggered by changes (a burst of changes costs one).
  const POLL_MIN_GAP_MS = 1000;
  // Page re-render coalescing after live changes.
  const UPDATE_DELAY_MS = 150;

  const KINDS = ['machine', 'disk', 'dimm', 'nic', 'switch', 'link', 'checker'];
  const STATES = ['GOOD', 'SLOW', 'WARNING', 'ERROR', 'FIX', 'REPAIR', 'NEWBIE', 'TEST'];
  const OUT_OF_SERVICE = new Set(['ERROR', 'FIX', 'REPAIR']);
  const STATE_RANK = { ERROR: 0, FIX: 1, REPAIR: 2, WARNING: 3, SLOW: 4, TEST: 5, NEWBIE: 6, GOOD: 7 };
  const LEVELS = {
    auto: 'normal: transitions within quota happen automatically',
    manual: 'detect and propose only: every capacity-removing transition waits for an operator',
    blind: 'reject every change (migrations): nothing moves, nothing is proposed',
  };
  const WINDOWS = { '24h': 86400e3, '48h': 172800e3, '7d': 604800e3, '30d': 2592000e3, all: Infinity };

  // ---------------------------------------------------------------- state
  const S = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    operator: sessionStorage.getItem(NAME_KEY) || '',
    objects: new Map(), // id -> {id, kind, host, state, grade, state_since_ms, labels, revision}
    loaded: false,
    truncated: false,
    revision: 0,
    cluster: null,
    summary: null, // GET /api/v1/summary: counts from the replicated counters
    safety: null, // the /safety answer, or {unavailable: ApiError}
    proposals: null, // pending proposals (for counts), or {unavailable: ApiError}
    agents: null,
    feed: [],
    live: 'connecting',
    authError: null, // the last 401/403
    watchGen: 0, // bumped to restart the watch (new token, resync)
  };
  let page = null; // {name, update()} of the page on screen
  let updateTimer = null;

  // ---------------------------------------------------------------- helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'value') el.value = v;
      else if (k === 'checked') el.checked = !!v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, children);
    return el;
  }
  function append(el, ...children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  function replace(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }
  const svgNS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) if (c) el.appendChild(c);
    return el;
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  function pad(n) { return String(n).padStart(2, '0'); }
  function utc(ms) {
    if (!ms) return '-';
    const d = new Date(ms);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}Z`;
  }
  function ago(ms) {
    if (!ms) return '';
    let d = Math.max(0, Date.now() - ms) / 1000;
    if (d < 60) return `${Math.floor(d)}s ago`;
    d /= 60; if (d < 60) return `${Math.floor(d)}m ago`;
    d /= 60; if (d < 48) return `${Math.floor(d)}h ago`;
    return `${Math.floor(d / 24)}d ago`;
  }
  function dur(ms) {
    if (ms === undefined || ms === null) return '-';
    const sec = ms / 1000;
    if (sec < 120) return `${Math.round(sec)}s`;
    if (sec < 7200) return `${Math.round(sec / 60)}m`;
    if (sec < 172800) return `${Math.round(sec / 3600)}h`;
    return `${Math.round(sec / 86400)}d`;
  }
  function when(ms) { return h('span', { class: 'nowrap', title: ago(ms) }, utc(ms)); }
  function badge(state) { return state ? h('span', { class: `badge st-${state}` }, state) : h('span', { class: 'muted' }, '-'); }
  function levelBadge(level) { return h('span', { class: `badge lv-${level}` }, level || '?'); }
  function objLink(id) { return h('a', { href: `#/object/${encodeURIComponent(id)}`, class: 'mono' }, id); }
  function hostLink(host) { return h('a', { href: `#/host/${encodeURIComponent(host)}` }, host); }
  function parseId(id) {
    const [kind, host, ...rest] = String(id).split('/');
    return { kind: kind || '', host: host || '', name: rest.join('/') };
  }
  function short(text, n) { text = String(text || ''); return text.length > n ? text.slice(0, n - 1) + '…' : text; }
  function num(n) {
    if (n === undefined || n === null) return '-';
    return typeof n === 'number' ? n.toLocaleString('en-US') : String(n); // quota limits may be "2.5%"
  }
  function errorBox(e) {
    return h('div', { class: 'error-box' }, describeError(e));
  }
  function describeError(e) {
    if (!(e instanceof ApiError)) return String(e && e.message || e);
    if (e.status === 401) return `401 ${e.code}: not signed in, or the token was not accepted (${e.message}). Sign in with a valid token.`;
    if (e.status === 403) return `403 ${e.code}: your token's role may not do this (${e.message}). An operator token is needed.`;
    if (e.code === 'NOT_LEADER') return `This master node is not the leader${e.leader ? ` (leader: ${e.leader})` : ''}: ${e.message}`;
    return `${e.status ? e.status + ' ' : ''}${e.code}: ${e.message}`;
  }
  function routeHref(name, params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v) q.set(k, v);
    const qs = q.toString();
    return `#/${name}${qs ? '?' + qs : ''}`;
  }

  // ---------------------------------------------------------------- API
  class ApiError extends Error {
    constructor(status, code, message, leader) {
      super(message);
      this.status = status; this.code = code; this.leader = leader || '';
    }
  }
  function authHeaders(token = S.token) {
    const hd = { Accept: 'application/json' };
    if (token) hd.Authorization = `Bearer ${token}`;
    return hd;
  }
  async function errorFrom(resp) {
    const text = await resp.text().catch(() => '');
    let body = null;
    try { body = JSON.parse(text); } catch (_) { /* not JSON: use the text */ }
    const code = (body && body.code) || `HTTP_${resp.status}`;
    const msg = (body && body.message) || text.slice(0, 300) || resp.statusText;
    return new ApiError(resp.status, code, msg, body && body.leader);
  }
  // opts.token: send this token instead of the signed-in one (the sign-in form checks a token before keeping it).
  async function api(path, opts = {}) {
    const token = opts.token === undefined ? S.token : opts.token;
    const headers = authHeaders(token);
    const init = { method: opts.method || 'GET', headers, cache: 'no-store', signal: opts.signal };
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    let resp;
    try {
      resp = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, 'NETWORK', `cannot reach the master (${e.message})`);
    }
    if (!resp.ok) {
      const err = await errorFrom(resp);
      // A refusal of a request sent before the operator signed in with another token says nothing about
      // the token now in use: no banner for it.
      if (opts.token !== undefined || token === S.token) noteAuth(err, opts.token !== undefined);
      throw err;
    }
    if (S.authError && S.authError.status === 401 && token === S.token) { S.authError = null; renderBanner(); }
    const text = await resp.text();
    try { return text ? JSON.parse(text) : null; } catch (e) {
      throw new ApiError(resp.status, 'BAD_RESPONSE', `the master answered something that is not JSON: ${text.slice(0, 120)}`);
    }
  }
  // A banner the operator dismissed stays dismissed for background polls with the same token and status
  // (they would bring it back every few seconds); an explicit sign-in attempt always shows its answer.
  function noteAuth(err, explicit) {
    const d = S.dismissed;
    if (!explicit && d && d.token === S.token && d.status === err.status) return;
    if (err.status === 401 || err.status === 403) {
      S.authError = err;
      renderBanner();
    }
  }
  function operatorName() { return S.operator || 'portal'; }

  // ---------------------------------------------------------------- banner and header
  function renderBanner() {
    const el = document.getElementById('banner');
    const e = S.authError;
    if (e) {
      el.className = 'banner auth';
      replace(el,
        h('strong', {}, e.status === 401 ? 'Not signed in (401)' : 'Not allowed (403)'),
        h('span', { class: 'grow' }, describeError(e)),
        h('a', { href: '#/login' }, e.status === 401 ? 'Sign in' : 'Use another token'),
        h('button', { onclick: () => { S.dismissed = { token: S.token, status: e.status }; S.authError = null; renderBanner(); } }, 'Dismiss'));
      el.hidden = false;
      el.dataset.status = String(e.status);
      return;
    }
    const leader = S.cluster && S.cluster.role && S.cluster.role !== 'leader' && leaderHttp();
    if (leader) {
      el.className = 'banner info';
      replace(el, h('span', { class: 'grow' },
        `This master node (${S.cluster.id}) is a ${S.cluster.role}; agent data and decisions are served by the leader.`),
      h('a', { href: `${location.protocol}//${leader}/`, rel: 'noreferrer' }, `Open the leader's portal (${leader})`));
      el.hidden = false;
      el.dataset.status = '';
      return;
    }
    el.hidden = true;
    el.dataset.status = '';
  }
  function leaderHttp() {
    const c = S.cluster;
    if (!c || !c.members) return '';
    const m = c.members.find((x) => x.id === c.leader_id);
    return m ? m.http_addr : '';
  }
  // The signed-in token's roles, from the master (null: not known yet, or the master checks no tokens).
  async function loadWhoami() {
    try {
      const w = await api('/whoami');
      S.whoami = w && w.secured ? w : null;
    } catch (e) {
      S.whoami = null;
    }
    renderWho();
    if (page && page.name === 'proposals') render();
  }
  function mayOperate() { return !S.whoami || S.whoami.roles.includes('operator'); }
  function renderWho() {
    const el = document.getElementById('who');
    if (S.token) {
      const roles = S.whoami ? ` [${S.whoami.roles.join(', ')}]` : '';
      replace(el, `${operatorName()}${roles} (token set) `, h('a', { href: '#/login' }, 'switch'), ' · ',
        h('a', { href: '#/', onclick: (ev) => { ev.preventDefault(); signOut(); } }, 'sign out'));
    } else {
      replace(el, 'no token · ', h('a', { href: '#/login' }, 'sign in'));
    }
  }
  function setLive(mode, why) {
    S.live = mode;
    const el = document.getElementById('live');
    el.textContent = mode;
    el.className = `live ${mode === 'live' ? 'ok' : (mode === 'connecting' ? '' : 'bad')}`;
    el.title = why || 'live updates from the watch stream';
    el.dataset.revision = String(S.revision);
  }
  function renderNav() {
    const name = route().name;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === name);
    const n = pendingCount();
    document.getElementById('nav-proposals').textContent = n ? String(n) : '';
  }
  function pendingCount() {
    if (S.cluster && typeof S.cluster.pending_proposals === 'number') return S.cluster.pending_proposals;
    if (S.proposals && Array.isArray(S.proposals.proposals)) return S.proposals.proposals.length;
    return 0;
  }

  // ---------------------------------------------------------------- data: snapshot + watch + polling
  function toEntry(o) {
    return {
      id: o.id, kind: o.kind, host: o.host, state: o.state, grade: o.grade || '',
      state_since_ms: o.state_since_ms, labels: o.labels || {}, revision: o.revision,
    };
  }
  async function loadSnapshot() {
    const r = await api(`/objects?limit=${LIST_LIMIT}`);
    const m = new Map();
    for (const o of r.objects) m.set(o.id, toEntry(o));
    S.objects = m;
    S.truncated = !!r.next_page_token || r.objects.length >= LIST_LIMIT;
    S.revision = r.revision;
    S.loaded = true;
    scheduleUpdate();
  }
  function applyEvent(ev) {
    S.revision = Math.max(S.revision, ev.revision || 0);
    if (ev.object) {
      let o = S.objects.get(ev.object);
      if (!o && ev.what !== 'agent') {
        const p = parseId(ev.object);
        o = { id: ev.object, kind: p.kind, host: p.host, state: ev.state || 'GOOD', grade: '', state_since_ms: ev.time_ms, labels: {}, revision: ev.revision };
        if (!S.truncated) S.objects.set(ev.object, o);
      }
      if (o) {
        if (ev.state) {
          if (ev.state !== o.state) o.state_since_ms = ev.time_ms;
          o.state = ev.state;
        }
        if (ev.grade !== undefined) o.grade = ev.grade;
        o.revision = ev.revision;
      }
    }
    S.feed.unshift(ev);
    if (S.feed.length > FEED_MAX) S.feed.length = FEED_MAX;
    // Quota use, scope levels and the proposal count move with transitions and held changes.
    if (ev.what !== 'agent') schedulePoll();
    scheduleUpdate();
  }
  async function watchLoop() {
    let backoff = WATCH_BACKOFF_MIN_MS;
    for (;;) {
      const gen = S.watchGen;
      try {
        if (!S.loaded) {
          setLive('connecting', 'loading the object list');
          await loadSnapshot();
        }
        const resp = await fetch(`${API}/watch?from=${S.revision + 1}&timeout_ms=${WATCH_TIMEOUT_MS}`,
          { headers: authHeaders(), cache: 'no-store' });
        if (!resp.ok) {
          const err = await errorFrom(resp);
          noteAuth(err);
          if (err.code === 'COMPACTED') { S.loaded = false; continue; }
          throw err;
        }
        setLive('live', `following changes from revision ${S.revision + 1}`);
        backoff = WATCH_BACKOFF_MIN_MS;
        await readStream(resp, gen);
      } catch (e) {
        const auth = e instanceof ApiError && (e.status === 401 || e.status === 403);
        setLive(auth ? 'signed out' : 'reconnecting', describeError(e));
        // Without a valid token, wait until the operator signs in instead of hammering the master.
        if (auth) { await waitFor(() => S.watchGen !== gen); continue; }
        await sleep(backoff);
        backoff = Math.min(backoff * 2, WATCH_BACKOFF_MAX_MS);
      }
    }
  }
  async function waitFor(cond) { while (!cond()) await sleep(250); }
  async function readStream(resp, gen) {
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    try {
      for (;;) {
        if (S.watchGen !== gen) return;
        const { value, done } = await reader.read();
        if (done) return;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          if (line) handleLine(JSON.parse(line));
        }
        if (buf.length > MAX_LINE_BYTES) throw new Error('watch line too long');
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }
  function handleLine(v) {
    if (typeof v.progress === 'number') {
      S.revision = Math.max(S.revision, v.progress);
      document.getElementById('live').dataset.revision = String(S.revision);
      return;
    }
    if (v.code && v.message !== undefined && v.revision === undefined) {
      if (v.code === 'COMPACTED') S.loaded = false;
      throw new ApiError(0, v.code, v.message);
    }
    applyEvent(v);
    document.getElementById('live').dataset.revision = String(S.revision);
  }
  async function refreshPolled() {
    const [c, sf, pr, sm] = await Promise.allSettled([
      api('/cluster'), api('/safety'), api('/proposals?status=pending'), api('/summary'),
    ]);
    if (c.status === 'fulfilled') S.cluster = c.value;
    // The fleet's counts from the master's replicated counters (exact for any fleet size); a master
    // without /summary (older binary) leaves the overview counting the objects the page holds.
    S.summary = sm.status === 'fulfilled' ? sm.value : null;
    S.safety = sf.status === 'fulfilled' ? sf.value : { unavailable: sf.reason };
    S.proposals = pr.status === 'fulfilled' ? pr.value : { unavailable: pr.reason };
    renderBanner();
    renderNav();
    scheduleUpdate();
  }
  let pollTimer = null;
  let lastPoll = 0;
  function schedulePoll() {
    if (pollTimer) return;
    pollTimer = setTimeout(() => {
      pollTimer = null;
      lastPoll = Date.now();
      refreshPolled().catch(() => {});
    }, Math.max(0, lastPoll + POLL_MIN_GAP_MS - Date.now()));
  }
  async function pollLoop() {
    for (;;) {
      await refreshPolled().catch(() => {});
      await sleep(POLL_MS);
    }
  }
  function scheduleUpdate() {
    if (updateTimer) return;
    updateTimer = setTimeout(() => {
      updateTimer = null;
      renderNav();
      if (page && page.update) {
        try { page.update(); } catch (e) { console.error('page update failed', e); }
      }
    }, UPDATE_DELAY_MS);
  }
  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    S.token = '';
    S.watchGen++;
    S.loaded = false;
    renderWho();
    go('#/login');
  }

  // ---------------------------------------------------------------- routing
  function route() {
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, qs] = raw.split('?');
    const parts = path.split('/');
    return {
      name: parts[0] || '',
      arg: parts.slice(1).map(decodeURIComponent).join('/'),
      params: new URLSearchParams(qs || ''),
    };
  }
  function go(hash) { if (location.hash !== hash) location.hash = hash; else render(); }
  const PAGES = {
    '': pageFleet, objects: pageSearch, object: pageObject, host: pageHost, proposals: pageProposals,
    safety: pageSafety, agents: pageAgents, checkers: pageCheckers, network: pageNetwork, events: pageEvents, fsm: pageFsm, login: pageLogin,
  };
  function render() {
    const r = route();
    const fn = PAGES[r.name] || pageNotFound;
    const main = document.getElementById('main');
    main.replaceChildren();
    main.dataset.page = r.name || 'fleet';
    page = { name: r.name };
    try {
      page = fn(main, r) || page;
    } catch (e) {
      append(main, errorBox(e));
      console.error(e);
    }
    renderNav();
    if (page.update) page.update();
  }
  function pageNotFound(main) {
    append(main, h('h1', {}, 'No such page'), h('p', {}, h('a', { href: '#/' }, 'Back to the fleet overview')));
  }

  // ---------------------------------------------------------------- login
  function pageLogin(main, r) {
    const token = h('input', { type: 'password', name: 'token', id: 'login-token', class: 'wide', autocomplete: 'off', placeholder: 'bearer token' });
    const name = h('input', { type: 'text', name: 'operator', id: 'login-name', value: S.operator, placeholder: 'your name (recorded with decisions)' });
    const msg = h('div', { id: 'login-msg' });
    const form = h('form', {
      class: 'panel', id: 'login-form',
      onsubmit: async (ev) => {
        ev.preventDefault();
        const t = token.value.trim();
        const who = name.value.trim();
        replace(msg, h('span', { class: 'muted' }, 'checking the token…'));
        // Check the token before keeping it: a refused token changes nothing (the banner says why, and a
        // previous sign-in in this tab stays as it was).
        try {
          await api('/cluster', { token: t });
        } catch (e) {
          replace(msg, h('div', { id: 'login-error' }, errorBox(e)));
          return;
        }
        S.token = t;
        S.operator = who;
        if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
        if (S.operator) sessionStorage.setItem(NAME_KEY, S.operator); else sessionStorage.removeItem(NAME_KEY);
        S.authError = null;
        S.dismissed = null;
        renderBanner();
        renderWho();
        loadWhoami();
        S.watchGen++;
        S.loaded = false;
        refreshPolled();
        const back = r.params.get('back');
        go(back && back.startsWith('#/') && !back.startsWith('#/login') ? back : '#/');
      },
    },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'Paste a bearer token (roles: read, operator, subscriber). It is kept in this browser tab only (sessionStorage) and sent as "Authorization: Bearer …" with every request. A master started with --insecure accepts requests without a token.'),
    h('div', { class: 'toolbar' },
      h('label', { class: 'field' }, 'Token', token),
      h('label', { class: 'field' }, 'Your name', name),
      h('button', { class: 'primary', type: 'submit', id: 'login-submit' }, 'Sign in')),
    msg);
    append(main, form);
    token.focus();
    return { name: 'login' };
  }

  // ---------------------------------------------------------------- fleet overview
  // Objects by kind and state from GET /api/v1/summary (null when the master has none).
  function summaryCounts() {
    if (!S.summary || !Array.isArray(S.summary.states)) return null;
    const by = {};
    for (const x of S.summary.states) (by[x.kind] || (by[x.kind] = {}))[x.state] = x.count;
    return by;
  }
  function sumStates(by, pred) {
    let n = 0;
    for (const row of Object.values(by)) for (const [st, v] of Object.entries(row)) if (pred(st)) n += v;
    return n;
  }
  function counts(filterFn) {
    const by = {};
    for (const o of S.objects.values()) {
      if (filterFn && !filterFn(o)) continue;
      const k = by[o.kind] || (by[o.kind] = {});
      k[o.state] = (k[o.state] || 0) + 1;
    }
    return by;
  }
  function card(label, value, sub, cls, id) {
    return h('div', { class: `card ${cls || ''}`, id }, h('div', { class: 'label' }, label),
      h('div', { class: 'value' }, value), h('div', { class: 'sub' }, sub || ''));
  }
  function expectedHosts() {
    if (S.cluster && typeof S.cluster.agents === 'number' && S.cluster.agents > 0) return S.cluster.agents;
    const hosts = new Set();
    for (const o of S.objects.values()) if (o.kind === 'machine') hosts.add(o.host);
    return hosts.size;
  }
  // ---------------------------------------------------------------- charts (SVG drawn here, no library)
  // Transitions per hour per kind (GET /charts/transitions, the master's hourly counters), the rack x state
  // heatmap (GET /charts/racks, the per-scope counters) and an object's archived readings
  // (GET /objects/<id>/series). Every mark has a <title> (hover shows value and time) and every chart has a
  // table twin for screen readers.
  const CHART_HOURS = 168;
  // Racks the heatmap draws (the master sums the rest into "other"; MAX_HEATMAP_RACKS there).
  const HEATMAP_MAX = 500;
  // Days of archived readings the object page asks for (the archive answers at most 2,000 points).
  const SERIES_DAYS = 30;
  // Least time between two fetches of the overview's charts while changes stream in (the 5 s poll
  // re-renders the page, so a change is charted within this plus POLL_MS).
  const CHART_MIN_GAP_MS = 5000;
  function hourText(ms) {
    const d = new Date(ms);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:00Z`;
  }
  function niceMax(v) {
    if (v <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function fmtNum(v) {
    if (typeof v !== 'number' || !isFinite(v)) return String(v);
    if (Number.isInteger(v)) return v.toLocaleString('en-US');
    return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3);
  }
  function srTable(caption, head, rows) {
    return h('table', { class: 'sr-only' }, h('caption', {}, caption),
      h('thead', {}, h('tr', {}, head.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, r.map((x) => h('td', {}, x))))));
  }
  // One kind's chart: stacked bars (one per target state) per hour, the cluster quota as a dashed line.
  function transitionsChart(data, kind) {
    const W = 720, H = 150, L = 40, R = 10, T = 10, B = 28;
    const hours = data.hours_ms;
    const series = data.series.filter((x) => x.kind === kind);
    const quotas = data.quotas.filter((q) => q.kind === kind);
    const drawn = quotas.filter((q) => q.per_hour !== null && q.per_hour !== undefined);
    let max = 0;
    hours.forEach((_, i) => { max = Math.max(max, series.reduce((a, x) => a + x.counts[i], 0)); });
    for (const q of drawn) max = Math.max(max, q.per_hour);
    const top = niceMax(max);
    const pw = W - L - R, ph = H - T - B, bw = pw / hours.length;
    const y = (v) => T + ph - (v / top) * ph;
    const total = series.reduce((a, x) => a + x.total, 0);
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'chart transitions', role: 'img', 'data-kind': kind, 'aria-labelledby': `tt-${kind}` },
      s('title', { id: `tt-${kind}`, text: `${kind}: ${total} transitions into ${data.to.join(' or ')} in the last ${hours.length} hours` }));
    for (const v of [0, top / 2, top]) {
      svg.appendChild(s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }));
      svg.appendChild(s('text', { x: L - 4, y: y(v) + 4, class: 'tick', 'text-anchor': 'end', text: fmtNum(v) }));
    }
    hours.forEach((ms, i) => {
      // A tick and date at each UTC midnight.
      if ((new Date(ms)).getUTCHours() === 0) {
        const d = new Date(ms);
        svg.appendChild(s('line', { x1: L + i * bw, x2: L + i * bw, y1: T + ph, y2: T + ph + 4, class: 'axis' }));
        svg.appendChild(s('text', { x: L + i * bw, y: H - B + 16, class: 'tick', text: `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}` }));
      }
      let acc = 0;
      for (const x of series) {
        const n = x.counts[i];
        if (!n) continue;
        svg.appendChild(s('rect', { x: L + i * bw + 0.5, y: y(acc + n), width: Math.max(1, bw - 1), height: y(acc) - y(acc + n), class: `bar f-${x.to}`, 'data-hour': ms, 'data-to': x.to, 'data-count': n },
          s('title', { text: `${kind} into ${x.to}: ${n} in the hour from ${hourText(ms)}` })));
        acc += n;
      }
    });
    svg.appendChild(s('line', { x1: L, x2: W - R, y1: T + ph, y2: T + ph, class: 'axis' }));
    svg.appendChild(s('text', { x: 4, y: T + ph / 2, class: 'axis-label', transform: `rotate(-90 10 ${T + ph / 2})`, 'text-anchor': 'middle', text: 'per hour' }));
    svg.appendChild(s('text', { x: W - R, y: H - 2, class: 'axis-label', 'text-anchor': 'end', text: 'hour (UTC)' }));
    for (const q of drawn) {
      svg.appendChild(s('line', { x1: L, x2: W - R, y1: y(q.per_hour), y2: y(q.per_hour), class: 'quota-line', 'data-per-hour': q.per_hour },
        s('title', { text: q.text })));
    }
    const legend = h('div', { class: 'legend small' },
      data.to.map((t) => h('span', { class: 'key' }, h('span', { class: `swatch b-${t}` }), `into ${t}`)),
      quotas.map((q) => h('div', { class: 'muted', 'data-quota': q.scope }, q.per_hour !== null && q.per_hour !== undefined ? h('span', { class: 'swatch quota' }) : null, q.text)),
      drawn.length ? h('div', { class: 'muted' }, `The quota counts entries into ${data.quota_states.join('/')} together (all bars of an hour stacked); bars are clock hours, the quota a sliding window; operator forces and approved proposals are not held by it.`) : null);
    const rows = hours.map((ms, i) => [hourText(ms), ...series.map((x) => String(x.counts[i]))]).filter((r) => r.slice(1).some((v) => v !== '0'));
    return h('div', { class: 'chart-box', 'data-kind': kind },
      h('h3', {}, `${kind} `, h('span', { class: 'muted small' }, `${num(total)} in ${hours.length} h`)), svg, legend,
      srTable(`${kind}: transitions per hour (hours with none left out)`, ['hour', ...series.map((x) => `into ${x.to}`)], rows));
  }
  function transitionsCharts(data) {
    if (!data) return h('div', { class: 'empty panel' }, 'Loading…');
    if (data.unavailable) return h('div', { class: 'empty panel' }, `Transition counts unavailable: ${describeError(data.unavailable)}`);
    const kinds = [...new Set(data.series.map((x) => x.kind))];
    if (!kinds.length) return h('div', { class: 'empty panel', id: 'transitions-empty' }, `No transitions into ${data.to.join(' or ')} in the last ${data.hours_ms.length} hours.`);
    return h('div', { class: 'charts' }, kinds.map((k) => transitionsChart(data, k)));
  }
  const HEAT_FAMILY = { GOOD: 'good', SLOW: 'warn', WARNING: 'warn', ERROR: 'bad', FIX: 'bad', REPAIR: 'bad', NEWBIE: 'new', TEST: 'new' };
  function rackHeatmap(data) {
    if (!data) return h('div', { class: 'empty panel' }, 'Loading…');
    if (data.unavailable) return h('div', { class: 'empty panel' }, `Rack counts unavailable: ${describeError(data.unavailable)}`);
    if (!data.scoped) return h('div', { class: 'empty panel' }, `"${data.label}" is not a scope label of the safety config, so the master keeps no counts per ${data.label}.`);
    const rows = data.other ? data.racks.concat([data.other]) : data.racks;
    if (!rows.length) return h('div', { class: 'empty panel', id: 'racks-empty' }, `No objects carry a ${data.label} label.`);
    const states = data.states;
    const CW = 64, CH = 18, L = 110, T = 22;
    const W = L + CW * states.length + 60, H = T + CH * rows.length + 4;
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'chart heatmap', role: 'img', 'aria-labelledby': 'heat-title' },
      s('title', { id: 'heat-title', text: `Objects per ${data.label} and state: ${data.racks_total} ${data.label} values` }));
    states.forEach((st, j) => svg.appendChild(s('text', { x: L + j * CW + CW / 2, y: 14, class: 'tick', 'text-anchor': 'middle', text: st })));
    svg.appendChild(s('text', { x: L + states.length * CW + 30, y: 14, class: 'tick', 'text-anchor': 'middle', text: 'total' }));
    rows.forEach((r, i) => {
      const yy = T + i * CH;
      const name = r === data.other ? `other (${data.other_racks})` : r.rack;
      svg.appendChild(s('text', { x: L - 6, y: yy + 13, class: 'tick', 'text-anchor': 'end', text: short(name, 16) }, s('title', { text: name })));
      states.forEach((st, j) => {
        const n = r.counts[st] || 0;
        const share = r.total ? n / r.total : 0;
        const pct = (share * 100).toFixed(share && share < 0.1 ? 1 : 0);
        svg.appendChild(s('rect', { x: L + j * CW + 1, y: yy + 1, width: CW - 2, height: CH - 2, class: `cell h-${n ? HEAT_FAMILY[st] || 'new' : 'zero'}`, 'fill-opacity': n ? (0.15 + 0.85 * share).toFixed(3) : 1, 'data-rack': r === data.other ? '' : r.rack, 'data-other': r === data.other ? 'true' : null, 'data-state': st, 'data-count': n },
          s('title', { text: `${data.label} ${name}, ${st}: ${n} of ${r.total} objects (${pct}%)` })));
        if (n) svg.appendChild(s('text', { x: L + j * CW + CW / 2, y: yy + 13, class: `cell-num${share > 0.55 ? ' on-dark' : ''}`, 'text-anchor': 'middle', text: fmtNum(n) }));
      });
      svg.appendChild(s('text', { x: L + states.length * CW + 30, y: yy + 13, class: 'tick', 'text-anchor': 'middle', text: fmtNum(r.total) }));
    });
    for (const el of svg.querySelectorAll('[data-other="null"]')) el.removeAttribute('data-other');
    const note = data.other
      ? `${num(data.racks_total)} ${data.label} values: the ${num(data.racks.length)} with most objects in ERROR/FIX/REPAIR are drawn, the other ${num(data.other_racks)} are summed in "other".`
      : `${num(data.racks_total)} ${data.label} values, most objects in ERROR/FIX/REPAIR first.`;
    return h('div', { class: 'chart-box' },
      h('p', { class: 'muted small', id: 'racks-note' }, `${note} Cells are coloured by the state's share of the ${data.label}'s objects${data.kind ? ` (kind ${data.kind})` : ' (every kind but checkers)'}.`),
      h('div', { class: 'heat-scroll' }, svg),
      srTable(`Objects per ${data.label} and state`, [data.label, ...states, 'total'], rows.map((r) => [r === data.other ? `other (${data.other_racks})` : r.rack, ...states.map((st) => String(r.counts[st] || 0)), String(r.total)])));
  }
  // An object's archived readings: a severity band per checker and a line chart per numeric value that changes.
  function seriesCharts(data) {
    if (!data) return h('p', { class: 'muted' }, 'Loading archived readings…');
    if (data.missing) return h('div', { class: 'empty panel', id: 'series-missing' }, `No archived readings: ${data.missing}`);
    if (data.unavailable) return h('div', { class: 'empty panel', id: 'series-missing' }, `Archived readings unavailable: ${describeError(data.unavailable)}`);
    const pts = data.points || [];
    if (!pts.length) return h('div', { class: 'empty panel', id: 'series-empty' }, `No archived readings between ${utc(data.from_ms)} and ${utc(data.to_ms)}.`);
    // The time axis spans the readings (not the whole asked window: a few readings of the last hour would
    // be a sliver of 30 days); the window asked for is said above the charts.
    const t0 = pts[0].time_ms, t1 = Math.max(pts[pts.length - 1].time_ms, t0 + 60000);
    const W = 720, L = 70, R = 10;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const out = [];
    out.push(h('p', { class: 'muted small', id: 'series-span' }, `${num(pts.length)} readings from ${utc(t0)} to ${utc(pts[pts.length - 1].time_ms)} (asked: ${utc(data.from_ms)} to ${utc(data.to_ms)}).`));
    if (data.truncated) out.push(h('p', { class: 'muted small' }, `The archive held more readings than it answers at once: the ${num(pts.length)} shown are a part of them.`));
    // Severity band per checker: one rect per run of equal severity.
    const checkers = [...new Set(pts.map((p) => p.checker))];
    const BH = 16;
    const band = s('svg', { viewBox: `0 0 ${W} ${checkers.length * (BH + 4) + 18}`, width: W, height: checkers.length * (BH + 4) + 18, class: 'chart band', role: 'img' },
      s('title', { text: `Severity over time, ${utc(t0)} to ${utc(t1)}` }));
    checkers.forEach((c, i) => {
      const own = pts.filter((p) => p.checker === c);
      const yy = i * (BH + 4);
      band.appendChild(s('text', { x: L - 6, y: yy + 12, class: 'tick', 'text-anchor': 'end', text: short(c, 12) }));
      for (let k = 0; k < own.length;) {
        let e = k;
        while (e + 1 < own.length && own[e + 1].severity === own[k].severity) e++;
        const from = own[k].time_ms, to = e + 1 < own.length ? own[e + 1].time_ms : t1;
        band.appendChild(s('rect', { x: x(from), y: yy, width: Math.max(1, x(to) - x(from)), height: BH, class: `sev f-${own[k].severity}`, 'data-severity': own[k].severity },
          s('title', { text: `${c}: ${own[k].severity} from ${utc(from)} to ${utc(to)}` })));
        k = e + 1;
      }
    });
    band.appendChild(s('text', { x: L, y: checkers.length * (BH + 4) + 14, class: 'tick', text: utc(t0) }));
    band.appendChild(s('text', { x: W - R, y: checkers.length * (BH + 4) + 14, class: 'tick', 'text-anchor': 'end', text: utc(t1) }));
    out.push(h('h3', {}, 'Severity'), band);
    // Numeric values: a chart for each that changes; the constant ones listed.
    const keys = [...new Set(pts.flatMap((p) => Object.keys(p.values || {})))].sort();
    const constant = [];
    for (const key of keys) {
      const own = pts.filter((p) => typeof (p.values || {})[key] === 'number').map((p) => ({ t: p.time_ms, v: p.values[key] }));
      const vals = own.map((p) => p.v);
      const lo = Math.min(...vals), hi = Math.max(...vals);
      if (lo === hi) { constant.push(`${key}=${fmtNum(lo)}`); continue; }
      const H = 90, T = 8, B = 16;
      const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
      const readout = s('text', { x: W - R, y: T + 8, class: 'readout', 'text-anchor': 'end', text: '' });
      const dot = s('circle', { r: 3, cx: -10, cy: -10, class: 'dot' });
      const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'chart line', role: 'img', 'data-key': key },
        s('title', { text: `${key} from ${fmtNum(own[0].v)} to ${fmtNum(own[own.length - 1].v)} (min ${fmtNum(lo)}, max ${fmtNum(hi)}), ${own.length} readings` }),
        s('line', { x1: L, x2: W - R, y1: y(lo), y2: y(lo), class: 'axis' }),
        s('text', { x: L - 6, y: y(hi) + 4, class: 'tick', 'text-anchor': 'end', text: fmtNum(hi) }),
        s('text', { x: L - 6, y: y(lo) + 4, class: 'tick', 'text-anchor': 'end', text: fmtNum(lo) }),
        s('polyline', { points: own.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' '), class: 'series' }),
        dot, readout);
      // Hover: the nearest reading's value and time.
      svg.addEventListener('mousemove', (ev) => {
        const box = svg.getBoundingClientRect();
        const px = ((ev.clientX - box.left) / box.width) * W;
        let best = own[0];
        for (const p of own) if (Math.abs(x(p.t) - px) < Math.abs(x(best.t) - px)) best = p;
        dot.setAttribute('cx', x(best.t)); dot.setAttribute('cy', y(best.v));
        readout.textContent = `${key} = ${fmtNum(best.v)} at ${utc(best.t)}`;
      });
      svg.addEventListener('mouseleave', () => { readout.textContent = ''; dot.setAttribute('cx', -10); });
      out.push(h('div', { class: 'chart-box', 'data-key': key }, h('h3', { class: 'mono' }, key), svg,
        srTable(`${key} over time`, ['time', key], own.slice(-50).map((p) => [utc(p.t), fmtNum(p.v)]))));
    }
    if (constant.length) out.push(h('p', { class: 'muted small', id: 'series-constant' }, 'Unchanged over the period: ', constant.map((c) => h('span', { class: 'pill' }, c))));
    return h('div', { id: 'series-charts' }, out);
  }
  async function loadSeries(id) {
    try {
      return await api(`/objects/${id.split('/').map(encodeURIComponent).join('/')}/series?days=${SERIES_DAYS}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return { missing: `the master's archive has none for this object (404: ${e.message}).` };
      return { unavailable: e };
    }
  }
  function pageFleet(main) {
    const cards = h('div', { class: 'cards', id: 'fleet-cards' });
    const scopes = h('div', { id: 'fleet-scopes' });
    const matrix = h('div', { id: 'fleet-matrix' });
    const attention = h('div', { id: 'fleet-attention' });
    const alerts = h('div', { id: 'fleet-alerts' });
    const feed = h('div', { id: 'fleet-feed' });
    const trans = h('div', { id: 'fleet-transitions' });
    const heat = h('div', { id: 'fleet-racks' });
    // The heatmap counts every kind (but checkers) unless one is chosen here.
    const heatKind = h('select', { id: 'racks-kind', 'aria-label': 'kind counted in the heatmap' },
      h('option', { value: '' }, 'every kind'), KINDS.filter((k) => k !== 'checker').map((k) => h('option', { value: k }, k)));
    let charts = { transitions: null, racks: null };
    let chartsLoading = false;
    let chartsRevision = -1;
    let chartsAt = 0;
    // The charts' data: fetched when the page opens and again when the revision moved (at most once per
    // poll: refreshPolled drives update()).
    let chartsAgain = false;
    const loadCharts = async () => {
      if (chartsLoading) { chartsAgain = true; return; }
      chartsAgain = false;
      chartsLoading = true;
      chartsRevision = S.revision;
      chartsAt = Date.now();
      const [t, r] = await Promise.allSettled([api(`/charts/transitions?hours=${CHART_HOURS}`), api(`/charts/racks${heatKind.value ? `?kind=${encodeURIComponent(heatKind.value)}` : ''}`)]);
      charts = {
        transitions: t.status === 'fulfilled' ? t.value : { unavailable: t.reason },
        racks: r.status === 'fulfilled' ? r.value : { unavailable: r.reason },
      };
      chartsLoading = false;
      replace(trans, transitionsCharts(charts.transitions));
      replace(heat, rackHeatmap(charts.racks));
      if (chartsAgain) loadCharts();
    };
    append(main, h('h1', {}, 'Fleet overview'), cards,
      h('div', { class: 'cols' },
        h('div', {}, h('h2', {}, 'Objects by kind and state'), matrix,
          h('h2', {}, 'Needs attention'), attention),
        h('div', {}, h('h2', {}, 'Alerts'), alerts, h('h2', {}, 'Recent changes ', h('a', { href: '#/events', class: 'small' }, 'all')), feed)),
      h('h2', {}, 'Scopes: level, quota use, pending proposals'), scopes,
      h('h2', {}, `Transitions into ERROR and REPAIR per hour, last ${CHART_HOURS / 24} days, by kind`), trans,
      h('h2', {}, 'Objects per rack and state ', h('label', { class: 'small muted' }, 'kind ', heatKind)), heat);
    heatKind.addEventListener('change', () => { chartsAt = 0; loadCharts(); });
    replace(trans, transitionsCharts(null));
    replace(heat, rackHeatmap(null));
    loadCharts();
    return {
      name: '',
      update() {
        if (S.revision !== chartsRevision && Date.now() - chartsAt >= CHART_MIN_GAP_MS) loadCharts();
        const c = S.cluster;
        const all = [...S.objects.values()];
        const sm = summaryCounts();
        const by = sm || counts();
        const out = sumStates(by, (st) => OUT_OF_SERVICE.has(st));
        const degraded = sumStates(by, (st) => st === 'WARNING' || st === 'SLOW');
        const total = sm ? S.summary.objects : (c ? c.objects : all.length);
        const partial = !sm && S.truncated ? ' · counts from the first ' + num(LIST_LIMIT) : '';
        const unfiled = sm && S.summary.repair_without_ticket ? ` · ${num(S.summary.repair_without_ticket)} awaiting a repair ticket` : '';
        const alive = c ? c.agents_alive : undefined;
        const expected = expectedHosts();
        const pend = pendingCount();
        const sf = S.safety && !S.safety.unavailable ? S.safety : null;
        const nAlerts = sf && sf.alerts ? sf.alerts.length : 0;
        const latched = sf && sf.scopes ? sf.scopes.filter((x) => x.latched || x.level !== 'auto').length : 0;
        replace(cards,
          card('Master', c ? `leader ${c.leader_id || '?'}` : '-', c ? `term ${c.term} · ${c.members.length} members · revision ${num(c.revision)}${c.last_error ? ' · ' + c.last_error : ''}` : 'loading', c && !c.leader_id ? 'bad' : ''),
          card('Agents alive', alive === undefined ? '-' : `${num(alive)} / ${num(expected)}`, expected > alive ? `${num(expected - alive)} silent or missing (expected: agents the master knows)` : 'alive / expected', expected > alive ? 'warn' : '', 'card-agents'),
          card('Objects', num(total), `${num(out)} out of service · ${num(degraded)} degraded${unfiled}${partial}`, out ? 'bad' : '', 'card-objects'),
          card('Pending proposals', num(pend), h('a', { href: '#/proposals' }, 'review'), pend ? 'warn' : '', 'card-proposals'),
          card('Scopes not auto', sf ? num(latched) : '-', sf ? `${num(nAlerts)} alerts` : 'safety API unavailable', latched ? 'warn' : ''));
        replace(matrix, kindStateMatrix(by));
        const byRank = (a, b) => (STATE_RANK[a.state] - STATE_RANK[b.state]) || (b.state_since_ms - a.state_since_ms);
        if (S.truncated) {
          // The page holds the first LIST_LIMIT objects only: the master lists the rest by state.
          const res = remoteByState({ kind: '', state: 'not-good', labels: [], q: '' });
          if (!res) replace(attention, h('div', { class: 'empty' }, 'Loading…'));
          else if (res.error) replace(attention, errorBox(res.error));
          else {
            const bad = res.objects.slice().sort(byRank);
            const total = sm ? sumStates(by, (st) => st !== 'GOOD') : bad.length;
            replace(attention, bad.length ? objectTable(bad.slice(0, 50), Math.max(total, bad.length)) : h('div', { class: 'empty panel' }, 'Every object is GOOD.'));
          }
        } else {
          const bad = all.filter((o) => o.state !== 'GOOD').sort(byRank);
          replace(attention, bad.length ? objectTable(bad.slice(0, 50), bad.length) : h('div', { class: 'empty panel' }, 'Every object is GOOD.'));
        }
        replace(scopes, scopesTable(true));
        replace(alerts, alertsList());
        replace(feed, feedList(S.feed.slice(0, 25)));
      },
    };
  }
  function kindStateMatrix(by) {
    const kinds = KINDS.filter((k) => by[k]).concat(Object.keys(by).filter((k) => !KINDS.includes(k)));
    if (!kinds.length) return h('div', { class: 'empty panel' }, S.loaded ? 'No objects yet.' : 'Loading…');
    return h('table', { class: 'matrix', id: 'matrix' },
      h('thead', {}, h('tr', {}, h('th', {}, 'kind'), STATES.map((st) => h('th', { class: 'num' }, st)), h('th', { class: 'num' }, 'total'))),
      h('tbody', {}, kinds.map((k) => {
        const row = by[k];
        const total = Object.values(row).reduce((a, b) => a + b, 0);
        return h('tr', { 'data-kind': k }, h('td', {}, h('a', { href: routeHref('objects', { kind: k }) }, k)),
          STATES.map((st) => {
            const n = row[st] || 0;
            return h('td', { class: `num ${n ? '' : 'zero'}`, 'data-state': st },
              n ? h('a', { href: routeHref('objects', { kind: k, state: st }), class: st === 'GOOD' ? '' : `badge st-${st}` }, num(n)) : '0');
          }),
          h('td', { class: 'num' }, num(total)));
      })));
  }
  function objectTable(list, total) {
    const shown = list.slice(0, TABLE_MAX);
    return h('div', {},
      h('table', { class: 'objects' },
        h('thead', {}, h('tr', {}, ['object', 'state', 'grade', 'since', 'host', 'labels'].map((x) => h('th', {}, x)))),
        h('tbody', {}, shown.map((o) => h('tr', { 'data-id': o.id, 'data-state': o.state },
          h('td', {}, objLink(o.id)), h('td', {}, badge(o.state)), h('td', {}, o.grade ? badge(o.grade) : ''),
          h('td', {}, when(o.state_since_ms)), h('td', {}, hostLink(o.host)),
          h('td', {}, Object.entries(o.labels || {}).map(([k, v]) => h('span', { class: 'pill' }, `${k}=${v}`))))))),
      total > shown.length ? h('p', { class: 'muted small' }, `${num(total)} objects match; the first ${num(shown.length)} are shown.`) : null);
  }
  function quotaBar(used, max, text) {
    if (!max) return h('span', { class: 'muted small' }, text || `${num(used)} (no limit)`);
    const frac = Math.min(1, used / max);
    const bar = h('div', { class: `bar ${frac >= 1 ? 'full' : (frac >= 0.7 ? 'mid' : '')}`, title: text || `${used} of ${max}` },
      h('span', {}), h('em', {}, text || `${num(used)} / ${num(max)}`));
    bar.firstChild.style.width = `${Math.round(frac * 100)}%`;
    return bar;
  }
  function safetyUnavailable() {
    const e = S.safety && S.safety.unavailable;
    if (!e) return null;
    if (e.status === 404) return h('div', { class: 'empty panel' }, 'This master has no safety API (GET /api/v1/safety answered 404): levels, quotas and proposals arrive with a newer master.');
    return errorBox(e);
  }
  function scopesTable(compact) {
    if (!S.safety) return h('div', { class: 'empty' }, 'Loading…');
    const un = safetyUnavailable();
    if (un) return un;
    const scopes = S.safety.scopes || [];
    if (!scopes.length) return h('div', { class: 'empty panel' }, 'No scopes.');
    return h('table', { class: 'scopes', id: compact ? 'scopes-compact' : 'scopes' },
      h('thead', {}, h('tr', {}, ['scope', 'level', 'quota use (now / max · in window / max)', 'pending', 'agents', compact ? 'last blocked' : 'set by / reason'].map((x) => h('th', {}, x)))),
      h('tbody', {}, scopes.map((sc) => h('tr', { 'data-scope': sc.scope },
        h('td', {}, h('a', { href: routeHref('safety', { scope: sc.scope }), class: 'mono' }, sc.scope)),
        h('td', {}, levelBadge(sc.level), sc.latched ? [' ', h('span', { class: 'badge latched', title: sc.reason || '' }, 'latched')] : null),
        h('td', {}, (sc.quotas || []).map((q) => h('div', { class: 'qrow small' },
          h('span', { class: 'pill' }, `${q.kind} (${num(q.population)})`),
          quotaBar(q.concurrent, q.max_concurrent, `${num(q.concurrent)} / ${num(q.max_concurrent)} at once`),
          quotaBar(q.entries, q.max_entries, `${num(q.entries)} / ${num(q.max_entries)} per ${dur(q.window_ms)}`))),
          sc.spike ? h('div', { class: 'qrow small spike', title: 'distinct objects this checker version would have taken out of service within the spike window; the scope latches into manual drive at the second figure' },
            h('span', { class: 'pill' }, 'spike'),
            sc.spike.latch_at ? quotaBar(sc.spike.held, sc.spike.latch_at, `${num(sc.spike.held)} / ${num(sc.spike.latch_at)} per ${dur(sc.spike.window_ms)}`)
              : h('span', { class: 'muted' }, `none within ${dur(sc.spike.window_ms)}`)) : null),
        h('td', { class: 'num' }, sc.pending_proposals ? h('a', { href: routeHref('proposals', { scope: sc.scope }) }, num(sc.pending_proposals)) : '0'),
        h('td', { class: 'num' }, `${num(sc.agents_alive)} / ${num(sc.agents)}`,
          sc.liveness && sc.liveness.held ? h('div', { class: 'small silent', title: 'agents that went silent within the liveness window; the scope latches into manual drive at the second figure' },
            `silent ${num(sc.liveness.held)} / ${num(sc.liveness.latch_at)} per ${dur(sc.liveness.window_ms)}`) : null),
        compact ? h('td', { class: 'small', title: sc.last_blocked || '' }, sc.last_blocked ? [short(sc.last_blocked, 60), ' ', h('span', { class: 'muted' }, ago(sc.last_blocked_ms))] : '-')
          : h('td', { class: 'small' }, sc.set_by ? `${sc.set_by}: ${sc.reason || ''}` : (sc.reason || '-'), sc.since_ms ? [' ', h('span', { class: 'muted' }, `since ${utc(sc.since_ms)}`)] : null)))));
  }
  function alertsList() {
    if (!S.safety) return h('div', { class: 'empty' }, 'Loading…');
    const un = safetyUnavailable();
    if (un) return un;
    const alerts = (S.safety.alerts || []).slice().sort((a, b) => b.time_ms - a.time_ms);
    if (!alerts.length) return h('div', { class: 'empty panel' }, 'No alerts.');
    return h('ul', { class: 'feed panel', id: 'alerts' }, alerts.map((a) => h('li', {},
      when(a.time_ms), ' ', h('span', { class: 'pill' }, a.scope), ' ', a.object ? [objLink(a.object), ' '] : null, a.message)));
  }
  function feedList(events) {
    if (!events.length) return h('div', { class: 'empty panel' }, 'No changes since this page was opened.');
    return h('ul', { class: 'feed panel' }, events.map((e) => h('li', { 'data-revision': e.revision },
      h('span', { class: 'muted' }, `#${e.revision} `), when(e.time_ms), ' ', e.object ? objLink(e.object) : '', ' ',
      e.what === 'transition' ? [badge(e.from_state), ' → ', badge(e.state)] : h('span', { class: 'pill' }, e.what),
      e.detail ? h('span', { class: 'muted' }, ` ${e.detail}`) : null)));
  }

  // ---------------------------------------------------------------- search
  function pageSearch(main, r) {
    const p = r.params;
    const q = h('input', { type: 'search', name: 'q', id: 'search-q', value: p.get('q') || '', placeholder: 'id or host contains…  e.g. host-017 or sdb' });
    const kind = h('select', { name: 'kind', id: 'search-kind' }, h('option', { value: '' }, 'any kind'), KINDS.map((k) => h('option', { value: k }, k)));
    kind.value = p.get('kind') || '';
    const state = h('select', { name: 'state', id: 'search-state' }, h('option', { value: '' }, 'any state'), h('option', { value: 'not-good' }, 'not GOOD'), STATES.map((st) => h('option', { value: st }, st)));
    state.value = p.get('state') || '';
    const label = h('input', { type: 'text', name: 'label', id: 'search-label', value: p.get('label') || '', placeholder: 'label k=v[,k=v]' });
    const results = h('div', { id: 'search-results' });
    const form = h('form', {
      class: 'inline', id: 'search-form',
      onsubmit: (ev) => {
        ev.preventDefault();
        go(routeHref('objects', { q: q.value.trim(), kind: kind.value, state: state.value, label: label.value.trim() }));
      },
    }, h('label', { class: 'field' }, 'Object id or host', q), h('label', { class: 'field' }, 'Kind', kind),
    h('label', { class: 'field' }, 'State', state), h('label', { class: 'field' }, 'Labels', label),
    h('button', { class: 'primary', type: 'submit' }, 'Search'));
    append(main, h('h1', {}, 'Search objects'),
      h('p', { class: 'muted' }, 'Find the objects of a host ("did the host where my job failed have a fault yesterday?": open the host to see its timeline), or every object of a kind, state or label.'),
      form, results);
    const crit = { q: (p.get('q') || '').toLowerCase(), kind: p.get('kind') || '', state: p.get('state') || '', labels: parseLabels(p.get('label') || '') };
    return {
      name: 'objects',
      update() {
        if (!S.loaded) { replace(results, h('div', { class: 'empty' }, 'Loading…')); return; }
        // A search by state in a fleet bigger than the page's copy asks the master (see remoteByState).
        const remoteRes = S.truncated && crit.state ? remoteByState(crit) : null;
        if (S.truncated && crit.state && !remoteRes) { replace(results, h('div', { class: 'empty' }, 'Loading…')); return; }
        if (remoteRes && remoteRes.error) { replace(results, errorBox(remoteRes.error)); return; }
        // A text search in a fleet bigger than the page's copy also asks the master for the host the text
        // names (see remoteByHost): that host's objects are found wherever they sort.
        const named = S.truncated && !crit.state ? hostOfQuery(p.get('q') || '') : '';
        const hostRes = named ? remoteByHost(named) : null;
        if (named && !hostRes) { replace(results, h('div', { class: 'empty' }, 'Loading…')); return; }
        let pool = remoteRes ? remoteRes.objects : [...S.objects.values()];
        if (hostRes && hostRes.objects) {
          const seen = new Set(pool.map((o) => o.id));
          pool = pool.concat(hostRes.objects.filter((o) => !seen.has(o.id)));
        }
        const hits = pool.filter((o) => matches(o, crit)).sort((a, b) => a.id < b.id ? -1 : 1);
        const hosts = [...new Set(hits.map((o) => o.host))].sort();
        replace(results,
          crit.q && hosts.length && hosts.length <= 20 ? h('div', { class: 'panel', id: 'search-hosts' }, h('strong', {}, 'Hosts: '),
            hosts.map((hh) => [h('a', { href: `#/host/${encodeURIComponent(hh)}`, class: 'pill' }, `${hh} — timeline`), ' '])) : null,
          S.truncated && !remoteRes ? h('p', { class: 'muted small', id: 'search-cut' }, `The portal holds the first ${num(LIST_LIMIT)} objects`,
            hostRes && hostRes.objects ? ` and, from the master, the objects of host ${named}${hostRes.more ? ` (its first ${num(TABLE_MAX)})` : ''}` : '',
            '; search by state or by a host name (the master lists those) for the rest.') : null,
          h('p', { class: 'muted', id: 'search-count' }, remoteRes && remoteRes.more ? `${num(hits.length)} objects shown (the first of each state the master listed; more match)` : `${num(hits.length)} objects`),
          hits.length ? objectTable(hits, hits.length) : h('div', { class: 'empty panel' }, 'Nothing matches.'));
      },
    };
  }
  function parseLabels(text) {
    return text.split(',').map((x) => x.trim()).filter(Boolean).map((x) => {
      const i = x.indexOf('=');
      return i < 0 ? [x, null] : [x.slice(0, i), x.slice(i + 1)];
    });
  }
  function matches(o, c) {
    if (c.kind && o.kind !== c.kind) return false;
    if (c.state === 'not-good' ? o.state === 'GOOD' : (c.state && o.state !== c.state)) return false;
    if (c.q && !o.id.toLowerCase().includes(c.q)) return false;
    for (const [k, v] of c.labels) {
      if (!(k in (o.labels || {}))) return false;
      if (v !== null && o.labels[k] !== v) return false;
    }
    return true;
  }

  // ---------------------------------------------------------------- listings by state from the master
  // When the page's own copy is cut at LIST_LIMIT (a big fleet), the views of objects out of GOOD (the
  // overview's "needs attention", a search by state) ask the master, which lists by state from its index
  // of the objects out of GOOD: only those objects are read, wherever they sort. At most TABLE_MAX rows per
  // view; fetched again when the revision moved (at most once per POLL_MIN_GAP_MS per view).
  const NOT_GOOD = STATES.filter((st) => st !== 'GOOD').sort((a, b) => STATE_RANK[a] - STATE_RANK[b]);
  // Views remembered (one per kind/state/labels asked): beyond this many the oldest are forgotten.
  const REMOTE_MAX = 16;
  // Pages followed per state. A page may hold few objects and still say there are more: when the
  // master's index is behind a burst of changes (thousands of registrations since its last warm, or a
  // scan where no index serves), each page reads a bounded number of candidates and stops there. Beyond
  // this many pages the view says more may match.
  const STATE_PAGES_MAX = 32;
  const remote = new Map();
  async function fetchByState(crit) {
    const states = crit.state === 'not-good' ? NOT_GOOD : [crit.state];
    const kv = crit.labels.filter(([, v]) => v !== null).map(([k, v]) => `${k}=${v}`).join(',');
    const objects = [];
    let more = false;
    for (const st of states) {
      if (objects.length >= TABLE_MAX) { more = true; break; }
      let token = '';
      for (let page = 0; ; page++) {
        // Past the first page only with a token in hand: what is left may match.
        if (objects.length >= TABLE_MAX || page >= STATE_PAGES_MAX) { more = true; break; }
        const qs = new URLSearchParams({ state: st, limit: String(TABLE_MAX - objects.length) });
        if (crit.kind) qs.set('kind', crit.kind);
        if (kv) qs.set('label', kv);
        if (token) qs.set('page_token', token);
        const r = await api(`/objects?${qs}`);
        for (const o of r.objects) objects.push(toEntry(o));
        token = r.next_page_token || '';
        if (!token) break;
      }
    }
    // The text filter is the view's own (applied where it is shown): one answer serves every text.
    return { objects: objects.filter((o) => matches(o, { ...crit, q: '' })), more };
  }
  // The master's answer for `crit` (null until the first one arrives; {error} when it failed).
  function remoteByState(crit) {
    return remembered(remote, JSON.stringify([crit.kind, crit.state, crit.labels]), () => fetchByState(crit));
  }
  // A master answer kept per key in `cache` (at most REMOTE_MAX keys, the oldest forgotten), asked again when
  // the revision moved, at most once per POLL_MIN_GAP_MS: null until the first answer arrives, {error} when
  // `fetch` failed (asked again at the next update).
  function remembered(cache, key, fetch) {
    let e = cache.get(key);
    if (!e) {
      if (cache.size >= REMOTE_MAX) cache.delete(cache.keys().next().value);
      e = { revision: -1, at: 0, loading: false, result: null };
      cache.set(key, e);
    }
    if (!e.loading && e.revision !== S.revision && Date.now() - e.at >= POLL_MIN_GAP_MS) {
      const rev = S.revision;
      e.loading = true;
      e.at = Date.now();
      fetch()
        .then((r) => { e.result = r; e.revision = rev; }, (err) => { e.result = { error: err }; })
        .finally(() => { e.loading = false; scheduleUpdate(); });
    }
    return e.result;
  }

  // ---------------------------------------------------------------- one host's objects from the master
  // The host a search text names: the text itself, or the second part of an object id (`disk/HOST/sda`);
  // '' when it cannot be a host name. The master lists one host's objects by reading that host's rows
  // only, so in a fleet bigger than the page's copy a host is found wherever it sorts. A text that names
  // no host the master knows finds nothing there (and a refused name is no hit, not an error).
  function hostOfQuery(q) {
    const parts = q.trim().split('/');
    const host = parts.length >= 2 ? parts[1] : parts[0];
    return /^[A-Za-z0-9._-]{1,253}$/.test(host) ? host : '';
  }
  const remoteHosts = new Map();
  function remoteByHost(host) {
    return remembered(remoteHosts, host, () => api(`/objects?host=${encodeURIComponent(host)}&limit=${TABLE_MAX}`)
      .then((r) => ({ objects: r.objects.map(toEntry), more: !!r.next_page_token }), () => ({ objects: [], more: false })));
  }

  // ---------------------------------------------------------------- one object
  function trClass(e) {
    const to = e.to_state || '';
    if (OUT_OF_SERVICE.has(to) || e.what === 'held') return 'tr-bad';
    if (to === 'WARNING' || to === 'SLOW' || isFaultFinding(e)) return 'tr-warn';
    if (to === 'GOOD') return 'tr-good';
    return 'tr-other';
  }
  function isFaultFinding(e) { return e.what === 'finding' && /\b(SLOW|WARNING|ERROR|FATAL)\b/.test(e.detail || ''); }
  function isFault(e) {
    return OUT_OF_SERVICE.has(e.to_state) || e.to_state === 'WARNING' || e.to_state === 'SLOW' || e.what === 'held' || isFaultFinding(e);
  }
  function timeline(entries, withObject) {
    if (!entries.length) return h('div', { class: 'empty panel' }, 'No history in this window.');
    return h('ol', { class: 'timeline', id: 'timeline' }, entries.map((e) => h('li', { class: trClass(e), 'data-revision': e.revision, 'data-to': e.to_state || '' },
      h('div', { class: 'when' }, utc(e.time_ms), ` · ${ago(e.time_ms)} · revision ${e.revision}`),
      h('div', {}, withObject ? [objLink(e.object), ' '] : null, h('span', { class: 'what' }, e.what), ' ',
        e.from_state || e.to_state ? [badge(e.from_state), ' → ', badge(e.to_state)] : null),
      e.cause && e.cause !== e.what ? h('div', { class: 'small' }, 'cause: ', e.cause) : null,
      e.detail ? h('div', { class: 'detail muted' }, e.detail) : null)));
  }
  function pageObject(main, r) {
    const id = r.arg;
    const head = h('div', { id: 'object-head' });
    const body = h('div', { id: 'object-body' });
    const onlyTransitions = h('input', { type: 'checkbox', id: 'only-transitions' });
    let detail = null;
    let err = null;
    let loading = false;
    let seenRevision = -1;
    let diagram = null;
    let series = null;
    const draw = () => {
      if (err) { replace(head, h('h1', { class: 'mono' }, id), errorBox(err)); replace(body); return; }
      if (!detail) { replace(head, h('h1', { class: 'mono' }, id), h('p', { class: 'muted' }, 'Loading…')); return; }
      const o = detail.object;
      replace(head,
        h('h1', {}, h('span', { class: 'mono' }, o.id), ' ', badge(o.state), o.grade ? [' ', h('span', { class: 'muted small' }, 'grade '), badge(o.grade)] : null),
        h('p', { class: 'muted' }, `${o.kind} on `, hostLink(o.host), ` · in ${o.state} since ${utc(o.state_since_ms)} (${ago(o.state_since_ms)}) · revision ${o.revision} · created ${utc(o.created_ms)}`));
      const hist = detail.history.slice().reverse().filter((e) => !onlyTransitions.checked || e.what === 'transition');
      replace(body,
        h('div', { class: 'cols' },
          h('div', {},
            h('h2', {}, 'History ', h('span', { class: 'muted small' }, `${num(o.history_len)} entries${o.history_compacted ? `, ${num(o.history_compacted)} older ones compacted` : ''}`)),
            h('label', { class: 'small' }, onlyTransitions, ' transitions only'),
            timeline(hist, false)),
          h('div', {},
            h('h2', {}, 'Evidence (latest finding per checker)'),
            (o.evidence || []).length ? o.evidence.map((f) => h('div', { class: 'panel' },
              h('div', {}, badge(f.severity), ' ', h('strong', {}, f.checker), ` ${f.version} · `, h('span', { class: 'mono' }, f.rule), ' · ', when(f.time_ms)),
              f.evidence ? h('pre', { class: 'evidence' }, f.evidence) : null,
              Object.keys(f.readings || {}).length ? h('div', {}, Object.entries(f.readings).map(([k, v]) => h('span', { class: 'pill' }, `${k}=${v}`))) : null))
              : h('div', { class: 'empty panel' }, 'No findings yet.'),
            h('h2', {}, 'Labels and attributes'),
            kvTable(Object.assign({}, ...Object.entries(o.labels || {}).map(([k, v]) => ({ [`label ${k}`]: v })), o.attributes || {})),
            diagram ? [h('h2', {}, `${o.kind} state machine`), fsmSvg(diagram, { current: o.state })] : null)),
        h('h2', {}, `Readings over the last ${SERIES_DAYS} days `, h('span', { class: 'muted small' }, 'from the archive; hover a chart for a value and its time')),
        h('div', { id: 'object-series' }, seriesCharts(series)));
    };
    onlyTransitions.addEventListener('change', draw);
    const load = async () => {
      if (loading) return;
      loading = true;
      try {
        detail = await api(`/objects/${id.split('/').map(encodeURIComponent).join('/')}`);
        err = null;
        seenRevision = detail.object.revision;
        const kind = detail.object.kind;
        if (!diagram && kind !== 'checker') diagram = await fsmFor(kind).catch(() => null);
        if (!series) series = await loadSeries(id);
      } catch (e) { err = e; }
      loading = false;
      draw();
    };
    append(main, head, body);
    draw();
    load();
    return {
      name: 'object',
      update() {
        const o = S.objects.get(id);
        if (o && o.revision > seenRevision && !loading) load();
      },
    };
  }
  function kvTable(obj) {
    const entries = Object.entries(obj);
    if (!entries.length) return h('div', { class: 'empty panel' }, 'None.');
    return h('table', { class: 'kv' }, h('tbody', {}, entries.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', { class: 'mono' }, v)))));
  }

  // ---------------------------------------------------------------- one host
  async function pool(items, n, fn) {
    const out = new Array(items.length);
    let next = 0;
    const worker = async () => {
      while (next < items.length) {
        const i = next++;
        try { out[i] = await fn(items[i]); } catch (e) { out[i] = { error: e }; }
      }
    };
    await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
    return out;
  }
  function pageHost(main, r) {
    const host = r.arg;
    const win = WINDOWS[r.params.get('window')] !== undefined ? r.params.get('window') : '48h';
    const summary = h('div', { id: 'host-summary' });
    const objs = h('div', { id: 'host-objects' });
    const tl = h('div', { id: 'host-timeline' });
    append(main, h('h1', {}, 'Host ', h('span', { class: 'mono' }, host)),
      h('div', { class: 'tabs' }, Object.keys(WINDOWS).map((w) => h('a', { href: `#/host/${encodeURIComponent(host)}?window=${w}`, class: w === win ? 'active' : '' }, w === 'all' ? 'all history' : `last ${w}`))),
      summary, h('div', { class: 'cols' }, h('div', {}, h('h2', {}, 'Timeline of all its objects'), tl), h('div', {}, h('h2', {}, 'Objects'), objs)));
    let lastRev = -1;
    let busy = false;
    const load = async () => {
      if (busy) return;
      busy = true;
      try {
        const list = await api(`/objects?host=${encodeURIComponent(host)}&limit=${LIST_LIMIT}`);
        lastRev = list.revision;
        const objects = list.objects.sort((a, b) => a.id < b.id ? -1 : 1);
        replace(objs, objects.length ? objectTable(objects.map(toEntry), objects.length) : h('div', { class: 'empty panel' }, 'No objects on this host.'));
        const since = win === 'all' ? 0 : Date.now() - WINDOWS[win];
        const fetched = await pool(objects.slice(0, HOST_DETAIL_MAX), FETCH_CONCURRENCY,
          (o) => api(`/objects/${o.id.split('/').map(encodeURIComponent).join('/')}`));
        const entries = [];
        for (const d of fetched) {
          if (!d || d.error) continue;
          for (const e of d.history) if (e.time_ms >= since) entries.push(Object.assign({ object: d.object.id }, e));
        }
        entries.sort((a, b) => (b.time_ms - a.time_ms) || (b.revision - a.revision));
        const faults = entries.filter(isFault);
        const notGood = objects.filter((o) => o.state !== 'GOOD');
        const winText = win === 'all' ? 'in its recorded history' : `in the last ${win}`;
        replace(summary, h('div', { class: `panel ${faults.length || notGood.length ? 'card bad' : ''}`, id: 'host-verdict' },
          faults.length ? h('strong', {}, `${host}: ${faults.length} fault ${faults.length === 1 ? 'entry' : 'entries'} ${winText}; latest: ${faults[0].object} ${faults[0].to_state || faults[0].what} at ${utc(faults[0].time_ms)}.`)
            : h('strong', {}, `${host}: no faults recorded ${winText}.`),
          notGood.length ? h('div', {}, `Now not GOOD: `, notGood.map((o) => [objLink(o.id), ' ', badge(o.state), ' '])) : h('div', { class: 'muted' }, `All ${objects.length} objects are GOOD now.`),
          objects.length > HOST_DETAIL_MAX ? h('div', { class: 'muted small' }, `History read for the first ${HOST_DETAIL_MAX} of ${objects.length} objects.`) : null));
        replace(tl, timeline(entries, true));
      } catch (e) {
        replace(summary, errorBox(e));
      }
      busy = false;
    };
    load();
    return {
      name: 'host',
      update() {
        for (const o of S.objects.values()) {
          if (o.host === host && o.revision > lastRev) { load(); return; }
        }
      },
    };
  }

  // ---------------------------------------------------------------- proposals
  function pageProposals(main, r) {
    const p = r.params;
    const status = h('select', { name: 'status', id: 'prop-status' }, ['pending', 'approved', 'rejected', 'stale', 'applied', 'all'].map((x) => h('option', { value: x }, x)));
    status.value = p.get('status') || 'pending';
    const scope = h('input', { type: 'text', name: 'scope', id: 'prop-scope', value: p.get('scope') || '', placeholder: 'scope' });
    const kind = h('select', { name: 'kind', id: 'prop-kind' }, h('option', { value: '' }, 'any kind'), KINDS.filter((k) => k !== 'checker').map((k) => h('option', { value: k }, k)));
    kind.value = p.get('kind') || '';
    const host = h('input', { type: 'text', name: 'host', id: 'prop-host', value: p.get('host') || '', placeholder: 'exact host' });
    const checker = h('input', { type: 'text', name: 'checker', id: 'prop-checker', value: p.get('checker') || '', placeholder: 'checker[@version]' });
    const filter = { status: status.value, scope: scope.value, kind: kind.value, host: host.value, checker: checker.value };
    const list = h('div', { id: 'prop-list' });
    const actions = h('div', { id: 'prop-actions', class: 'panel' });
    const reason = h('textarea', { id: 'prop-reason', placeholder: 'Reason (required; recorded with the decision)' });
    const result = h('div', { id: 'prop-result' });
    const selected = new Set();
    let data = null;
    let err = null;
    append(main, h('h1', {}, 'Proposals'),
      h('p', { class: 'muted' }, 'Capacity-removing transitions the master held back (manual drive or a quota). Approving lets the transition happen; rejecting drops it. Both need a reason.'),
      h('form', {
        class: 'inline', id: 'prop-filter',
        onsubmit: (ev) => { ev.preventDefault(); go(routeHref('proposals', { status: status.value, scope: scope.value.trim(), kind: kind.value, host: host.value.trim(), checker: checker.value.trim() })); },
      }, h('label', { class: 'field' }, 'Status', status), h('label', { class: 'field' }, 'Scope', scope), h('label', { class: 'field' }, 'Kind', kind),
      h('label', { class: 'field' }, 'Host', host), h('label', { class: 'field' }, 'Checker', checker), h('button', { type: 'submit', class: 'primary' }, 'Filter')),
      actions, result, list);
    const visible = () => (data && data.proposals ? data.proposals : []);
    const drawActions = () => {
      const pending = visible().filter((x) => x.status === 'pending');
      const n = [...selected].filter((id) => pending.some((x) => String(x.id) === id)).length;
      const hasFilter = filter.scope || filter.kind || filter.host || filter.checker;
      replace(actions,
        mayOperate() ? null : h('p', { class: 'muted', id: 'prop-role-note' },
          `Signed in with the ${S.whoami.roles.join(', ')} role: approving or rejecting needs operator, and the master will refuse it.`),
        h('label', { class: 'field' }, 'Reason', reason),
        h('div', { class: 'toolbar' },
          h('button', { class: 'approve', id: 'approve-selected', disabled: !n, onclick: () => confirmDecide('approve', [...selected]) }, `Approve selected (${n})`),
          h('button', { class: 'danger', id: 'reject-selected', disabled: !n, onclick: () => confirmDecide('reject', [...selected]) }, `Reject selected (${n})`),
          h('span', { class: 'grow' }),
          h('button', { id: 'approve-filter', disabled: !hasFilter || !pending.length, title: 'every pending proposal matching scope/kind/host/checker, decided by the master', onclick: () => confirmDecide('approve', null) }, 'Approve all matching the filter'),
          h('button', { id: 'reject-filter', disabled: !hasFilter || !pending.length, onclick: () => confirmDecide('reject', null) }, 'Reject all matching the filter')));
    };
    const confirmDecide = (decision, ids) => {
      const why = reason.value.trim();
      if (!why) { replace(result, h('div', { class: 'result bad' }, 'A reason is required.')); reason.focus(); return; }
      const what = ids ? `${ids.length} selected proposal${ids.length === 1 ? '' : 's'}` :
        `every pending proposal matching ${['scope', 'kind', 'host', 'checker'].filter((k) => filter[k]).map((k) => `${k}=${filter[k]}`).join(', ')} (${visible().filter((x) => x.status === 'pending').length} shown now)`;
      replace(result, h('div', { class: `confirm ${decision === 'reject' ? 'danger' : ''}`, id: 'prop-confirm' },
        h('p', {}, h('strong', {}, `${decision === 'approve' ? 'Approve' : 'Reject'} ${what}?`),
          decision === 'approve' ? ' The held transitions will happen now (objects go out of service).' : ' The held transitions are dropped.'),
        ids ? h('ul', { class: 'small' }, ids.map((id) => {
          const x = visible().find((v) => String(v.id) === id);
          return h('li', {}, `#${id} `, x ? [h('span', { class: 'mono' }, x.object), ' ', badge(x.from_state), ' → ', badge(x.to_state)] : '');
        })) : null,
        h('p', { class: 'small' }, `By ${operatorName()} · reason: ${why}`),
        h('button', { class: decision === 'approve' ? 'approve' : 'danger', id: 'prop-confirm-yes', onclick: () => decide(decision, ids, why) }, `Yes, ${decision}`), ' ',
        h('button', { onclick: () => replace(result) }, 'Cancel')));
    };
    const decide = async (decision, ids, why) => {
      const body = { decision, ids: ids ? ids.map((x) => (/^\d+$/.test(x) ? Number(x) : x)) : [], by: operatorName(), reason: why };
      if (!ids) for (const k of ['scope', 'kind', 'host', 'checker']) if (filter[k]) body[k] = filter[k];
      replace(result, h('div', { class: 'muted' }, 'Deciding…'));
      try {
        const res = await api('/proposals/decide', { method: 'POST', body });
        selected.clear();
        replace(result, h('div', { class: `result ${res.failed && res.failed.length ? 'bad' : ''}`, id: 'prop-done' },
          `${decision === 'approve' ? 'Approved' : 'Rejected'} ${res.decided.length}: ${res.decided.join(', ') || 'none'}.`,
          (res.failed || []).map((f) => h('div', {}, `${f.id}: ${f.error}`))));
        reason.value = '';
        await load();
        refreshPolled();
      } catch (e) {
        replace(result, h('div', { id: 'prop-error' }, errorBox(e)));
      }
    };
    const drawList = () => {
      if (err) {
        replace(list, err.status === 404 ? h('div', { class: 'empty panel' }, `This master has no proposals API (${describeError(err)}).`) : errorBox(err));
        return;
      }
      if (!data) { replace(list, h('div', { class: 'empty' }, 'Loading…')); return; }
      const rows = visible();
      const pend = rows.filter((x) => x.status === 'pending');
      const all = h('input', { type: 'checkbox', id: 'prop-all', title: 'select every pending proposal shown', checked: pend.length && pend.every((x) => selected.has(String(x.id))) });
      all.addEventListener('change', () => { for (const x of pend) { if (all.checked) selected.add(String(x.id)); else selected.delete(String(x.id)); } drawList(); drawActions(); });
      replace(list, h('p', { class: 'muted' }, `${num(rows.length)} proposals (revision ${num(data.revision)})`),
        rows.length ? h('table', { class: 'proposals', id: 'prop-table' },
          h('thead', {}, h('tr', {}, h('th', {}, all), ['object', 'transition', 'cause and evidence', 'scopes', 'held because', 'created', 'repeats', 'status'].map((x) => h('th', {}, x)))),
          h('tbody', {}, rows.slice(0, TABLE_MAX).map((x) => {
            const id = String(x.id);
            const box = h('input', { type: 'checkbox', class: 'prop-check', 'data-id': id, disabled: x.status !== 'pending', checked: selected.has(id) });
            box.addEventListener('change', () => { if (box.checked) selected.add(id); else selected.delete(id); drawActions(); });
            return h('tr', { 'data-id': id, 'data-object': x.object, 'data-status': x.status },
              h('td', {}, box), h('td', {}, objLink(x.object), h('div', { class: 'muted small' }, `#${id}`)),
              h('td', { class: 'nowrap' }, badge(x.from_state), ' → ', badge(x.to_state)),
              h('td', { class: 'small' }, x.cause, x.evidence ? h('details', {}, h('summary', {}, 'evidence'), h('pre', { class: 'evidence' }, x.evidence)) : null),
              h('td', {}, (x.scopes || []).map((sc) => h('span', { class: 'pill' }, sc))),
              h('td', { class: 'small' }, (x.held_by || []).map((sc) => h('span', { class: 'pill' }, sc)), ' ', x.reason),
              h('td', {}, when(x.created_ms)), h('td', { class: 'num' }, num(x.repeats)),
              h('td', { class: 'small' }, h('span', { class: 'pill' }, x.status), x.decided_by ? h('div', { class: 'muted' }, `${x.decided_by}: ${x.decided_reason || ''} ${utc(x.decided_ms)}`) : null));
          }))) : h('div', { class: 'empty panel' }, 'No proposals match.'));
    };
    const load = async () => {
      const q = new URLSearchParams({ status: filter.status });
      for (const k of ['scope', 'kind', 'host', 'checker']) if (filter[k]) q.set(k, filter[k]);
      try { data = await api(`/proposals?${q}`); err = null; } catch (e) { err = e; }
      drawList();
      drawActions();
    };
    drawActions();
    drawList();
    load();
    let lastPoll = Date.now();
    return {
      name: 'proposals',
      update() {
        // Reload with the polled data (the pending count moved) or every POLL_MS.
        if (Date.now() - lastPoll >= POLL_MS || (S.proposals && data && S.proposals.revision !== undefined && S.proposals.revision > data.revision)) {
          lastPoll = Date.now();
          load();
        }
      },
    };
  }

  // ---------------------------------------------------------------- levels and quotas
  function pageSafety(main, r) {
    const wanted = r.params.get('scope') || '';
    const table = h('div', { id: 'safety-scopes' });
    const quotas = h('div', { id: 'safety-quotas' });
    const form = h('div', { id: 'level-form', class: 'panel' });
    const result = h('div', { id: 'level-result' });
    append(main, h('h1', {}, 'Operating levels and quotas'),
      h('p', { class: 'muted' }, Object.entries(LEVELS).map(([k, v]) => [levelBadge(k), ` ${v}. `])),
      table, h('h2', {}, 'Change a level or release a latched scope'), form, result, h('h2', {}, 'Configured quotas'), quotas);
    const scopeSel = h('select', { id: 'level-scope' });
    const levelSel = h('select', { id: 'level-level' }, Object.keys(LEVELS).map((l) => h('option', { value: l }, l)));
    const reason = h('textarea', { id: 'level-reason', placeholder: 'Reason (required; e.g. change freeze for the sales event)' });
    let formBuilt = false;
    const buildForm = (scopes) => {
      const cur = scopeSel.value || wanted;
      replace(scopeSel, scopes.map((sc) => h('option', { value: sc.scope }, `${sc.scope} (${sc.level}${sc.latched ? ', latched' : ''})`)));
      if (cur && scopes.some((sc) => sc.scope === cur)) scopeSel.value = cur;
      if (formBuilt) return;
      formBuilt = true;
      replace(form, h('div', { class: 'inline' },
        h('label', { class: 'field' }, 'Scope', scopeSel), h('label', { class: 'field' }, 'New level', levelSel)),
      h('label', { class: 'field' }, 'Reason', reason),
      h('div', { class: 'toolbar' },
        h('button', { class: 'primary', id: 'level-change', onclick: () => confirm('level') }, 'Change level…'),
        h('button', { id: 'level-release', onclick: () => confirm('release') }, 'Release latch…')));
    };
    const scopeOf = (name) => ((S.safety && S.safety.scopes) || []).find((sc) => sc.scope === name);
    const confirm = (what) => {
      const why = reason.value.trim();
      const sc = scopeOf(scopeSel.value);
      if (!sc) { replace(result, h('div', { class: 'result bad' }, 'Choose a scope.')); return; }
      if (!why) { replace(result, h('div', { class: 'result bad' }, 'A reason is required.')); reason.focus(); return; }
      const to = levelSel.value;
      const text = what === 'level'
        ? [`Change scope `, h('strong', { class: 'mono' }, sc.scope), ' from ', levelBadge(sc.level), ' to ', levelBadge(to), '? ', LEVELS[to] + '.']
        : [`Release the latch on scope `, h('strong', { class: 'mono' }, sc.scope), `? It was latched because: ${sc.reason || '(no reason recorded)'}. Automatic drive resumes within quota.`];
      if (what === 'release' && !sc.latched) { replace(result, h('div', { class: 'result bad' }, `Scope ${sc.scope} is not latched; change its level instead.`)); return; }
      if (what === 'level' && to === sc.level) { replace(result, h('div', { class: 'result bad' }, `Scope ${sc.scope} is already ${to}.`)); return; }
      replace(result, h('div', { class: `confirm ${to === 'auto' || what === 'release' ? 'danger' : ''}`, id: 'level-confirm' },
        h('p', {}, text), h('p', { class: 'small' }, `By ${operatorName()} · reason: ${why}`),
        h('button', {
          class: 'primary', id: 'level-confirm-yes',
          onclick: async () => {
            try {
              if (what === 'level') await api('/levels', { method: 'POST', body: { scope: sc.scope, level: to, by: operatorName(), reason: why } });
              else await api('/release', { method: 'POST', body: { scope: sc.scope, by: operatorName(), reason: why } });
              replace(result, h('div', { class: 'result', id: 'level-done' }, what === 'level' ? `Scope ${sc.scope} is now ${to}.` : `Scope ${sc.scope} released.`));
              reason.value = '';
              await refreshPolled();
            } catch (e) { replace(result, h('div', { id: 'level-error' }, errorBox(e))); }
          },
        }, 'Confirm'), ' ', h('button', { onclick: () => replace(result) }, 'Cancel')));
    };
    return {
      name: 'safety',
      update() {
        replace(table, scopesTable(false));
        const un = S.safety && safetyUnavailable();
        if (!S.safety || un) { replace(form, un || 'Loading…'); formBuilt = false; replace(quotas); return; }
        buildForm(S.safety.scopes || []);
        const qs = S.safety.quotas || [];
        replace(quotas, qs.length ? h('table', {}, h('thead', {}, h('tr', {}, ['kind', 'scope', 'window', 'max entries per window', 'max at once'].map((x) => h('th', {}, x)))),
          h('tbody', {}, qs.map((q) => h('tr', {}, h('td', {}, q.kind), h('td', { class: 'mono' }, q.scope), h('td', {}, dur(q.window_ms)),
            h('td', { class: 'num' }, num(q.max_entries)), h('td', { class: 'num' }, num(q.max_concurrent))))))
          : h('div', { class: 'empty panel' }, 'No quotas configured.'));
      },
    };
  }

  // ---------------------------------------------------------------- agents
  function pageAgents(main) {
    const summary = h('div', { id: 'agents-summary', class: 'cards' });
    const versions = h('div', { id: 'agents-versions' });
    const table = h('div', { id: 'agents-table' });
    append(main, h('h1', {}, 'Agents'), summary, h('h2', {}, 'Checker version spread'), versions, h('h2', {}, 'Every agent'), table);
    let data = null;
    let err = null;
    const load = async () => {
      try { data = await api('/agents'); err = null; } catch (e) { err = e; }
      draw();
    };
    const draw = () => {
      if (err) { replace(table, errorBox(err)); return; }
      if (!data) { replace(table, h('div', { class: 'empty' }, 'Loading…')); return; }
      const agents = data.agents.slice().sort((a, b) => (a.alive - b.alive) || (a.host < b.host ? -1 : 1));
      const alive = agents.filter((a) => a.alive).length;
      const expected = expectedHosts();
      const hostsWithAgent = new Set(agents.map((a) => a.host));
      const missing = [...new Set([...S.objects.values()].filter((o) => o.kind === 'machine').map((o) => o.host))].filter((x) => !hostsWithAgent.has(x));
      const restarted = agents.filter((a) => a.restarts > 0);
      replace(summary,
        card('Alive / expected', `${num(alive)} / ${num(expected)}`, 'expected: agents the master knows', alive < expected ? 'warn' : ''),
        card('Silent', num(agents.length - alive), 'known to the leader but not heartbeating', agents.length > alive ? 'bad' : ''),
        card('Never heard from', num(missing.length), missing.slice(0, 5).join(', ') + (missing.length > 5 ? '…' : ''), missing.length ? 'warn' : ''),
        card('Restarted', num(restarted.length), 'start time changed while this leader watched', restarted.length ? 'warn' : ''));
      const spread = {};
      for (const a of agents) for (const [c, v] of Object.entries(a.checkers || {})) { (spread[c] = spread[c] || {})[v] = (spread[c][v] || 0) + 1; }
      const names = Object.keys(spread).sort();
      replace(versions, names.length ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'checker'), h('th', {}, 'versions (agents)'))),
        h('tbody', {}, names.map((c) => h('tr', { class: Object.keys(spread[c]).length > 1 ? 'spread' : '' }, h('td', {}, c),
          h('td', {}, Object.entries(spread[c]).sort().map(([v, n]) => h('span', { class: 'pill' }, `${v} × ${n}`)))))))
        : h('div', { class: 'empty panel' }, 'No agent reported checker versions.'));
      replace(table, agents.length ? h('table', { id: 'agents' },
        h('thead', {}, h('tr', {}, ['agent', 'host', 'alive', 'last heartbeat', 'restarts', 'version', 'started', 'outbox', 'dropped'].map((x) => h('th', {}, x)))),
        h('tbody', {}, agents.slice(0, TABLE_MAX).map((a) => h('tr', { 'data-agent': a.agent },
          h('td', { class: 'mono' }, a.agent), h('td', {}, hostLink(a.host)),
          h('td', {}, a.alive ? badge('GOOD') : h('span', { class: 'badge st-ERROR' }, 'SILENT')),
          h('td', {}, `${dur(a.last_heartbeat_ms_ago)} ago`), h('td', { class: 'num' }, num(a.restarts)), h('td', { class: 'mono' }, a.version || '-'),
          h('td', {}, when(a.started_ms)), h('td', { class: 'num' }, num(a.outbox_entries)), h('td', { class: 'num' }, num(a.outbox_dropped))))))
        : h('div', { class: 'empty panel' }, 'No agent has sent a heartbeat to this leader yet.'));
    };
    draw();
    load();
    let last = Date.now();
    return { name: 'agents', update() { if (Date.now() - last >= POLL_MS) { last = Date.now(); load(); } } };
  }

  // ---------------------------------------------------------------- network (issue 16)
  // The leader's last closed probe window: the rack-to-rack loss heatmap (GET /net/matrix) and the ranked
  // suspects with why and what the leader did (GET /net/suspects). Loss shades are classes (the CSP forbids
  // inline styles): heat-0 none, then <0.1%, <1%, <5%, <20%, >=20%.
  function heatClass(lost, sent) {
    if (!sent) return 'heat-na';
    const l = lost / sent;
    if (l === 0) return 'heat-0';
    if (l < 0.001) return 'heat-1';
    if (l < 0.01) return 'heat-2';
    if (l < 0.05) return 'heat-3';
    if (l < 0.2) return 'heat-4';
    return 'heat-5';
  }
  function pageNetwork(main) {
    const head = h('div', { id: 'net-summary', class: 'cards' });
    const heat = h('div', { id: 'net-matrix' });
    const list = h('div', { id: 'net-suspects' });
    append(main, h('h1', {}, 'Network'), head, h('h2', {}, 'Suspects (last window)'), list,
      h('h2', {}, 'Loss between racks (rows probe columns)'), heat);
    let sus = null;
    let mat = null;
    let err = null;
    const load = async () => {
      try { [sus, mat] = await Promise.all([api('/net/suspects?limit=50'), api('/net/matrix')]); err = null; } catch (e) { err = e; }
      draw();
    };
    const draw = () => {
      if (err) { replace(list, errorBox(err)); replace(heat); replace(head); return; }
      if (!sus || !mat) { replace(list, h('div', { class: 'empty' }, 'Loading…')); return; }
      const closed = n0(sus.window_end_ms) > 0;
      replace(head,
        card('Window', closed ? dur(n0(sus.window_ms)) : '-', closed ? `closed ${ago(n0(sus.window_end_ms))}` : 'no window closed yet on this leader'),
        card('Reporters', num(n0(sus.reporters)), 'agents whose report landed in it'),
        card('Bad flows', `${num(n0(sus.bad_flows))} / ${num(n0(sus.flows))}`, 'probe results above the loss threshold', n0(sus.bad_flows) ? 'warn' : ''),
        card('Suspects', num(sus.suspects.length), sus.topology ? 'topology loaded' : 'no topology: only hosts can be suspects', sus.suspects.length ? 'bad' : ''));
      replace(list, sus.suspects.length ? h('table', { id: 'net-suspects-table' },
        h('thead', {}, h('tr', {}, ['#', 'suspect', 'score', 'decision', 'why', 'flows', 'loss', 'evidence'].map((x) => h('th', {}, x)))),
        h('tbody', {}, sus.suspects.map((x) => h('tr', { 'data-target': x.target, class: x.decision === 'ERROR' ? 'spread' : '' },
          h('td', { class: 'num' }, String(x.rank)), h('td', { class: 'mono' }, h('a', { href: `#/object/${encodeURIComponent(x.target)}` }, x.target)),
          h('td', { class: 'num' }, Number(x.score).toFixed(2)), h('td', {}, x.decision ? badge(x.decision) : h('span', { class: 'muted' }, 'ranked')),
          h('td', { class: 'small' }, x.why), h('td', { class: 'num' }, `${num(x.bad_flows)} / ${num(x.flows)}`),
          h('td', { class: 'num' }, `${(Number(x.loss) * 100).toFixed(2)}%`),
          h('td', { class: 'small mono' }, (x.evidence || []).slice(0, 3).join('\n'))))))
        : h('div', { class: 'empty panel' }, closed ? 'No suspects in the last window.' : 'No window closed yet.'));
      const racks = mat.racks || [];
      const cell = new Map((mat.cells || []).map((c) => [`${c.src}\u0000${c.dst}`, c]));
      replace(heat, racks.length ? h('table', { id: 'net-heatmap', class: 'matrix heatmap' },
        h('thead', {}, h('tr', {}, h('th', {}, 'from \\ to'), racks.map((r) => h('th', { class: 'mono' }, r)))),
        h('tbody', {}, racks.slice(0, TABLE_MAX).map((src) => h('tr', {}, h('th', { class: 'mono' }, src),
          racks.map((dst) => {
            const c = cell.get(`${src}\u0000${dst}`);
            if (!c) return h('td', { class: 'heat-na' }, '');
            const sent = n0(c.sent), lost = n0(c.lost);
            return h('td', { class: `num ${heatClass(lost, sent)}`, title: `${src} -> ${dst}: ${lost}/${sent} lost, p99 ${c.rtt_p99_us} us, ${c.flows} flows`,
              'data-src': src, 'data-dst': dst }, `${(lost * 100 / sent).toFixed(2)}%`);
          })))))
        : h('div', { class: 'empty panel' }, 'No rack-to-rack results yet (a topology or switch= labels are needed).'));
    };
    draw();
    load();
    let last = Date.now();
    return { name: 'network', update() { if (Date.now() - last >= POLL_MS) { last = Date.now(); load(); } } };
  }

  // ---------------------------------------------------------------- checkers (catalog and gray release)
  // The version distribution per checker (GET /rollouts), the catalog (GET /catalog) and the rollouts with
  // their controls: pause, resume, widen, promote, rollback, each with a reason and a confirmation step
  // (POST /rollouts). A rollout the master paused by itself (canary stop) is highlighted with its reason
  // and the deviation figures of its last window.
  const ROLLOUT_ACTIONS = {
    pause: 'stop assigning this version to more hosts; hosts keep what they run',
    resume: 'continue the rollout where it stopped',
    widen: 'assign this version to more hosts (a larger percentage keeps the hosts it has)',
    promote: 'make this version the stable one on every host',
    rollback: 'return every canary host to the previous version',
    retire: 'unassign the stable version: no host runs this checker any more (a model stops predicting, a rule set or profile gives way to the agent\'s built-in one)',
  };
  // Which actions make sense in which rollout status (the master checks again and refuses the rest).
  const ROLLOUT_ALLOWED = {
    gray: ['pause', 'widen', 'promote', 'rollback'],
    paused: ['resume', 'widen', 'promote', 'rollback'],
  };
  const n0 = (x) => Number(x || 0); // uint64 may arrive as a JSON string; missing fields are zero
  function rolloutKey(ro) { return `${ro.name}@${ro.version}`; }
  function rolloutTarget(ro) {
    const t = [];
    if (n0(ro.percent) > 0) t.push(`${n0(ro.percent)}% of hosts`);
    if ((ro.hosts || []).length) t.push(`hosts ${ro.hosts.join(', ')}`);
    if ((ro.labels || []).length) t.push(`labels ${ro.labels.join(', ')}`);
    return t.join(' · ') || '-';
  }
  function deviationTable(d) {
    if (!d) return h('span', { class: 'muted' }, 'no comparison window yet');
    const bad = d.verdict && d.verdict !== 'ok';
    return h('table', { class: `deviation ${bad ? 'bad' : ''}`, 'data-verdict': d.verdict || '' },
      h('thead', {}, h('tr', {}, ['window', 'canary hosts', 'objects', 'new version flags', 'current version flags', 'limit', 'hosts failing', 'verdict'].map((x) => h('th', {}, x)))),
      h('tbody', {}, h('tr', {},
        h('td', {}, d.window_start_ms ? [when(n0(d.window_start_ms)), ` + ${dur(n0(d.window_ms))}`] : dur(n0(d.window_ms))),
        h('td', { class: 'num' }, num(n0(d.canary_hosts))), h('td', { class: 'num' }, num(n0(d.canary_objects))),
        h('td', { class: `num ${bad && d.verdict === 'too-many-flags' ? 'hot' : ''}`, 'data-field': 'new_flagged' }, num(n0(d.new_flagged))),
        h('td', { class: 'num', 'data-field': 'current_flagged' }, num(n0(d.current_flagged))),
        h('td', { class: 'num', 'data-field': 'limit' }, num(n0(d.limit))),
        h('td', { class: `num ${bad && d.verdict === 'too-many-failures' ? 'hot' : ''}`, 'data-field': 'hosts_failing' }, num(n0(d.hosts_failing))),
        h('td', {}, h('span', { class: `badge ${bad ? 'st-ERROR' : 'st-GOOD'}` }, d.verdict || '-')))));
  }
  function pageCheckers(main, r) {
    const wanted = r.params.get('name') || '';
    const alerts = h('div', { id: 'checkers-alerts' });
    const dist = h('div', { id: 'checkers-dist' });
    const rollouts = h('div', { id: 'checkers-rollouts' });
    const catalog = h('div', { id: 'checkers-catalog' });
    const result = h('div', { id: 'rollout-result' });
    const reason = h('textarea', { id: 'rollout-reason', placeholder: 'Reason (required; recorded in the audit log with the change)' });
    const percent = h('input', { type: 'number', id: 'rollout-percent', min: '0', max: '100', step: 'any', placeholder: 'widen to %' });
    append(main, h('h1', {}, 'Checkers'),
      h('p', { class: 'muted' }, 'Which version of every checker runs where, the gray releases in progress and their comparison with the current version on the same hosts. A new version that flags far more objects than the current one, or fails on its hosts, is paused by the master itself.'),
      alerts, h('h2', {}, 'Version distribution'), dist,
      h('h2', {}, 'Rollouts'), h('div', { class: 'panel' },
        h('div', { class: 'inline' }, h('label', { class: 'field grow' }, 'Reason', reason), h('label', { class: 'field' }, 'Widen to (%)', percent)),
        h('p', { class: 'small muted' }, Object.entries(ROLLOUT_ACTIONS).map(([k, v]) => [h('strong', {}, k), `: ${v}. `]))),
      result, rollouts, h('h2', {}, 'Catalog'), catalog);
    let status = null;
    let cat = null;
    let err = null;
    const load = async () => {
      const q = wanted ? `?name=${encodeURIComponent(wanted)}` : '';
      const [st, ca] = await Promise.allSettled([api(`/rollouts${q}`), api('/catalog')]);
      if (st.status === 'fulfilled') { status = st.value; err = null; } else err = st.reason;
      cat = ca.status === 'fulfilled' ? ca.value : { unavailable: ca.reason };
      draw();
    };
    const confirmAction = (action, ro) => {
      const why = reason.value.trim();
      if (!why) { replace(result, h('div', { class: 'result bad' }, 'A reason is required.')); reason.focus(); return; }
      const body = { action, name: ro.name, version: ro.version, by: operatorName(), reason: why };
      if (action === 'widen') {
        const p = Number(percent.value);
        if (percent.value.trim() === '' || !Number.isFinite(p) || p <= 0 || p > 100) {
          replace(result, h('div', { class: 'result bad' }, 'Widen needs a percentage above 0 and at most 100.')); percent.focus(); return;
        }
        if (p <= n0(ro.percent)) {
          replace(result, h('div', { class: 'result bad' }, `${rolloutKey(ro)} already covers ${n0(ro.percent)}%: widen to more.`)); percent.focus(); return;
        }
        body.percent = p;
      }
      const danger = action !== 'pause';
      replace(result, h('div', { class: `confirm ${danger ? 'danger' : ''}`, id: 'rollout-confirm', 'data-action': action },
        h('p', {}, `${action[0].toUpperCase()}${action.slice(1)} `, h('strong', { class: 'mono' }, rolloutKey(ro)),
          action === 'widen' ? ` from ${n0(ro.percent)}% to ${body.percent}% of hosts` : '', `? This will ${ROLLOUT_ACTIONS[action]}.`,
          ro.auto_paused && action === 'resume' ? ` The master paused it because: ${ro.paused_reason || '(no reason recorded)'}.` : ''),
        h('p', { class: 'small' }, `By ${operatorName()} · reason: ${why}`),
        h('button', {
          class: danger ? 'danger' : 'primary', id: 'rollout-confirm-yes',
          onclick: async (ev) => {
            ev.target.disabled = true;
            try {
              const resp = await api('/rollouts', { method: 'POST', body });
              const now = resp && resp.rollout ? resp.rollout.status : '';
              replace(result, h('div', { class: 'result', id: 'rollout-done', 'data-status': now || '' }, `${rolloutKey(ro)}: ${action} done${now ? ` (now ${now})` : ''}.`));
              reason.value = '';
              percent.value = '';
              await load();
            } catch (e) { replace(result, h('div', { id: 'rollout-error' }, errorBox(e))); }
          },
        }, `Yes, ${action}`), ' ', h('button', { id: 'rollout-confirm-no', onclick: () => replace(result) }, 'Cancel')));
    };
    // A stable version can be retired (unassigned) once no rollout of its checker is in progress.
    const retireButton = (c) => {
      const busy = (c.rollouts || []).some((ro) => ROLLOUT_ALLOWED[ro.status]);
      if (!c.stable_version || c.type === 'builtin' || busy) return null;
      const ro = { name: c.name, version: c.stable_version };
      return [' ', h('button', {
        class: 'small', 'data-action': 'retire', 'data-checker': c.name,
        disabled: !mayOperate(), title: mayOperate() ? ROLLOUT_ACTIONS.retire : 'needs the operator role',
        onclick: () => confirmAction('retire', ro),
      }, 'retire…')];
    };
    const draw = () => {
      if (err && !status) { replace(dist, errorBox(err)); return; }
      if (!status) { replace(dist, 'Loading…'); return; }
      const checkers = status.checkers || [];
      const all = checkers.flatMap((c) => (c.rollouts || []).map((ro) => ({ c, ro })));
      const stopped = all.filter(({ ro }) => ro.auto_paused && ro.status === 'paused');
      replace(alerts, stopped.map(({ ro }) => h('div', { class: 'canary-stop', id: `alert-${rolloutKey(ro)}`, 'data-rollout': rolloutKey(ro) },
        h('strong', {}, `Canary stopped: ${rolloutKey(ro)} was paused automatically`),
        h('p', {}, ro.paused_reason || '(no reason recorded)'), deviationTable(ro.deviation))));
      replace(dist, checkers.length ? h('table', { id: 'dist' },
        h('thead', {}, h('tr', {}, ['checker', 'type', 'stable', 'version', 'assigned', 'running', 'failed to verify', 'failing', 'not reporting', ''].map((x) => h('th', {}, x)))),
        h('tbody', {}, checkers.flatMap((c) => {
          const vs = (c.versions || []).length ? c.versions : [{ version: c.stable_version }];
          const most = Math.max(1, ...vs.map((v) => n0(v.assigned)));
          return vs.map((v, i) => {
            const bar = h('div', { class: 'vbar' }, h('span', { class: 'run' }), h('span', { class: 'unv' }));
            bar.firstChild.style.width = `${(100 * n0(v.running)) / most}%`;
            bar.lastChild.style.width = `${(100 * (n0(v.failed_verify) + n0(v.failed))) / most}%`;
            return h('tr', { 'data-checker': c.name, 'data-version': v.version || '', 'data-shadow': v.shadow ? 'true' : 'false' },
              h('td', {}, i === 0 ? h('strong', {}, c.name) : ''), h('td', {}, i === 0 ? (c.type || '') : ''),
              h('td', { class: 'mono' }, i === 0 ? [c.stable_version || '-', retireButton(c)] : ''),
              h('td', { class: 'mono' }, v.version || '-', v.shadow ? [' ', h('span', { class: 'pill' }, 'shadow')] : null),
              h('td', { class: 'num', 'data-field': 'assigned' }, num(n0(v.assigned))),
              h('td', { class: 'num', 'data-field': 'running' }, num(n0(v.running))),
              h('td', { class: `num ${n0(v.failed_verify) ? 'hot' : ''}`, 'data-field': 'failed_verify' }, num(n0(v.failed_verify))),
              h('td', { class: `num ${n0(v.failed) ? 'hot' : ''}`, 'data-field': 'failed' }, num(n0(v.failed))),
              h('td', { class: 'num', 'data-field': 'not_reporting' }, num(n0(v.not_reporting))), h('td', {}, bar));
          });
        })))
        : h('div', { class: 'empty panel' }, 'No checker in the catalog yet.'));
      replace(rollouts, all.length ? h('table', { id: 'rollouts' },
        h('thead', {}, h('tr', {}, ['rollout', 'status', 'targets', 'previous', 'started', 'by / reason', 'deviation', 'actions'].map((x) => h('th', {}, x)))),
        h('tbody', {}, all.map(({ ro }) => {
          const allowed = ROLLOUT_ALLOWED[ro.status] || [];
          return h('tr', { 'data-rollout': rolloutKey(ro), 'data-status': ro.status || '', class: ro.auto_paused && ro.status === 'paused' ? 'auto-paused' : '' },
            h('td', { class: 'mono' }, rolloutKey(ro), ro.shadow ? [' ', h('span', { class: 'pill' }, 'shadow')] : null),
            h('td', {}, h('span', { class: `badge ro-${ro.status || ''}` }, ro.status || '?'),
              ro.auto_paused ? h('div', { class: 'small hot', 'data-field': 'paused_reason' }, `paused by the master: ${ro.paused_reason || ''}`) : null),
            h('td', { class: 'small' }, rolloutTarget(ro)), h('td', { class: 'mono' }, ro.previous_version || '-'),
            h('td', {}, when(n0(ro.started_ms))), h('td', { class: 'small' }, `${ro.by || ''}: ${ro.reason || ''}`),
            h('td', {}, deviationTable(ro.deviation)),
            h('td', { class: 'actions' }, allowed.length ? allowed.map((a) => h('button', {
              class: a === 'rollback' ? 'danger' : '', 'data-action': a, 'data-rollout': rolloutKey(ro),
              disabled: !mayOperate(), title: mayOperate() ? ROLLOUT_ACTIONS[a] : 'needs the operator role',
              onclick: () => confirmAction(a, ro),
            }, `${a}…`)) : h('span', { class: 'muted' }, 'finished')));
        })))
        : h('div', { class: 'empty panel' }, 'No rollout yet: `huatuo rollout start NAME@VERSION --percent 5`.'));
      if (!cat) return;
      if (cat.unavailable) { replace(catalog, errorBox(cat.unavailable)); return; }
      const arts = cat.artifacts || [];
      replace(catalog, arts.length ? h('table', { id: 'catalog' },
        h('thead', {}, h('tr', {}, ['artifact', 'type', 'size', 'sha256', 'pushed', 'description'].map((x) => h('th', {}, x)))),
        h('tbody', {}, arts.slice(0, TABLE_MAX).map((x) => h('tr', { 'data-artifact': `${x.name}@${x.version}` },
          h('td', { class: 'mono' }, `${x.name}@${x.version}`), h('td', {}, x.type || ''), h('td', { class: 'num' }, num(n0(x.size))),
          h('td', { class: 'mono small', title: x.sha256 || '' }, short(x.sha256, 16)),
          h('td', { class: 'small' }, x.pushed_by || '', ' ', when(n0(x.pushed_ms))), h('td', { class: 'small' }, x.description || '')))))
        : h('div', { class: 'empty panel' }, 'The catalog is empty.'));
    };
    draw();
    load();
    let last = Date.now();
    return { name: 'checkers', update() { if (Date.now() - last >= POLL_MS) { last = Date.now(); load(); } } };
  }

  // ---------------------------------------------------------------- changes
  function pageEvents(main, r) {
    const f = h('input', { type: 'search', id: 'events-filter', value: r.params.get('q') || '', placeholder: 'object or detail contains…' });
    const list = h('div', { id: 'events-list' });
    f.addEventListener('input', () => page.update());
    append(main, h('h1', {}, 'Changes (live)'), h('p', { class: 'muted' }, `Every change the watch stream delivered since this page was loaded (the last ${FEED_MAX}). Revision now: `, h('span', { id: 'events-rev' })),
      h('div', { class: 'inline' }, f), list);
    return {
      name: 'events',
      update() {
        document.getElementById('events-rev').textContent = num(S.revision);
        const q = f.value.trim().toLowerCase();
        replace(list, feedList(S.feed.filter((e) => !q || (e.object || '').toLowerCase().includes(q) || (e.detail || '').toLowerCase().includes(q))));
      },
    };
  }

  // ---------------------------------------------------------------- state machines
  const fsmCache = {};
  function fsmFor(kind) {
    if (!fsmCache[kind]) fsmCache[kind] = api(`/fsm/${encodeURIComponent(kind)}`).catch((e) => { delete fsmCache[kind]; throw e; });
    return fsmCache[kind];
  }
  // Lifecycle order around the ring: in service at the top, out of service on the right, back via NEWBIE/TEST.
  const RING = ['GOOD', 'SLOW', 'WARNING', 'ERROR', 'FIX', 'REPAIR', 'NEWBIE', 'TEST'];
  function fsmSvg(m, opts = {}) {
    const W = 860, H = 520, cx = W / 2, cy = H / 2 + 10, rx = 320, ry = 185, NW = 104, NH = 40;
    const states = m.states.map((x) => x.name).sort((a, b) => RING.indexOf(a) - RING.indexOf(b));
    const pos = {};
    states.forEach((st, i) => {
      const a = -Math.PI / 2 - Math.PI / 2.6 + (2 * Math.PI * i) / states.length;
      pos[st] = { x: cx + rx * Math.cos(a), y: cy + ry * Math.sin(a) };
    });
    const svg = s('svg', { class: 'fsm', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${m.kind} state machine`, 'data-kind': m.kind });
    const defs = s('defs', {},
      s('marker', { id: `arrow-${m.kind}`, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, s('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#7b8496' })),
      s('marker', { id: `arrow-cap-${m.kind}`, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, s('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#c62828' })));
    svg.appendChild(defs);
    svg.appendChild(s('text', { x: 12, y: 22, class: 'title', text: `${m.kind}: ${m.states.length} states, ${m.edges.length} edges (red: removes capacity, counts against quotas)` }));
    const edgeEls = [];
    // Clip a point on the segment from c toward p to the border of the node box around c.
    const border = (c, p) => {
      const dx = p.x - c.x, dy = p.y - c.y;
      const t = Math.min((NW / 2 + 4) / Math.abs(dx || 1e-9), (NH / 2 + 4) / Math.abs(dy || 1e-9));
      return { x: c.x + dx * Math.min(t, 1), y: c.y + dy * Math.min(t, 1) };
    };
    m.edges.forEach((e, i) => {
      const a = pos[e.from], b = pos[e.to];
      if (!a || !b) return;
      // Bend every edge to its right: a pair A->B / B->A becomes two separate arcs.
      const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2, dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
      const bend = 0.18 * len;
      const c = { x: mx - (dy / len) * bend, y: my + (dx / len) * bend };
      const p0 = border(a, c), p1 = border(b, c);
      const path = s('path', {
        class: `edge ${e.capacity_removing ? 'cap' : ''}`, d: `M${p0.x.toFixed(1)},${p0.y.toFixed(1)} Q${c.x.toFixed(1)},${c.y.toFixed(1)} ${p1.x.toFixed(1)},${p1.y.toFixed(1)}`,
        'marker-end': `url(#${e.capacity_removing ? 'arrow-cap-' : 'arrow-'}${m.kind})`, 'data-from': e.from, 'data-to': e.to,
      }, s('title', { text: `${e.from} → ${e.to}: ${e.label}` }));
      // The label sits on the curve's midpoint (quadratic Bezier at t = 0.5).
      const lx = 0.25 * p0.x + 0.5 * c.x + 0.25 * p1.x, ly = 0.25 * p0.y + 0.5 * c.y + 0.25 * p1.y;
      const label = s('text', { class: 'elabel', x: lx.toFixed(1), y: (ly + 4).toFixed(1), text: String(i + 1) }, s('title', { text: `${e.from} → ${e.to}: ${e.label}` }));
      edgeEls.push([path, label]);
      svg.appendChild(path);
    });
    for (const [, label] of edgeEls) svg.appendChild(label);
    const capacity = new Set(m.states.filter((x) => x.removes_capacity).map((x) => x.name));
    svg.appendChild(s('circle', { class: 'start', cx: pos[m.start].x - NW / 2 - 26, cy: pos[m.start].y, r: 6 }));
    svg.appendChild(s('path', { class: 'edge', d: `M${pos[m.start].x - NW / 2 - 20},${pos[m.start].y} L${pos[m.start].x - NW / 2 - 3},${pos[m.start].y}`, 'marker-end': `url(#arrow-${m.kind})` }));
    for (const st of states) {
      const p = pos[st];
      const n = opts.counts ? (opts.counts[st] || 0) : null;
      svg.appendChild(s('g', { class: `node ${capacity.has(st) ? 'cap' : ''} ${opts.current === st ? 'current' : ''}`, 'data-state': st },
        s('rect', { x: p.x - NW / 2, y: p.y - NH / 2, width: NW, height: NH, rx: 9 }),
        s('text', { x: p.x, y: p.y + (n === null ? 5 : 0), text: st }),
        n === null ? null : s('text', { class: 'n', x: p.x, y: p.y + 15, text: `${num(n)} object${n === 1 ? '' : 's'}` })));
    }
    const hl = (on, i) => { for (const el of edgeEls[i]) el.classList.toggle('hl', on); };
    edgeEls.forEach(([path, label], i) => {
      for (const el of [path, label]) {
        el.addEventListener('mouseenter', () => hl(true, i));
        el.addEventListener('mouseleave', () => hl(false, i));
      }
    });
    return svg;
  }
  function pageFsm(main, r) {
    const kind = r.arg || 'disk';
    const body = h('div', { id: 'fsm-body' });
    append(main, h('h1', {}, 'State machines'),
      h('div', { class: 'tabs' }, ['disk', 'machine', 'dimm', 'nic', 'switch', 'link'].map((k) => h('a', { href: `#/fsm/${k}`, class: k === kind ? 'active' : '' }, k))),
      body);
    let m = null;
    const draw = () => {
      if (!m) return;
      const c = counts((o) => o.kind === kind)[kind] || {};
      replace(body,
        h('p', { class: 'legend' }, 'Drawn from the same tables the master runs (GET /api/v1/fsm/', kind, '). Numbers on the arcs refer to the edge list; the counts are this portal\'s live object copy.'),
        h('div', { class: 'cols' },
          h('div', {}, fsmSvg(m, { counts: c })),
          h('div', {}, h('table', { id: 'fsm-edges' },
            h('thead', {}, h('tr', {}, ['#', 'from', 'to', 'when'].map((x) => h('th', {}, x)))),
            h('tbody', {}, m.edges.map((e, i) => h('tr', { 'data-from': e.from, 'data-to': e.to },
              h('td', { class: 'num' }, String(i + 1)), h('td', {}, badge(e.from)), h('td', {}, badge(e.to)),
              h('td', { class: 'small' }, e.label, e.capacity_removing ? h('span', { class: 'muted' }, ' (removes capacity)') : null))))))),
        h('details', {}, h('summary', {}, 'Mermaid source'), h('pre', { class: 'evidence', id: 'fsm-mermaid' }, m.mermaid)));
    };
    fsmFor(kind).then((v) => { m = v; draw(); }).catch((e) => replace(body, errorBox(e)));
    return { name: 'fsm', update: draw };
  }

  // ---------------------------------------------------------------- start
  async function start() {
    renderWho();
    window.addEventListener('hashchange', render);
    // Ask once whether the master wants a token before drawing pages that would all fail with 401.
    try {
      S.cluster = await api('/cluster');
    } catch (e) {
      if (e.status === 401 && route().name !== 'login') {
        go(`#/login?back=${encodeURIComponent(location.hash || '#/')}`);
      }
    }
    if (S.token) loadWhoami();
    render();
    pollLoop();
    watchLoop();
    setInterval(() => { if (page && page.name === '') scheduleUpdate(); }, 30000); // refresh "ago" texts
  }
  window.huatuoPortal = { state: S }; // for the browser test and for debugging from the console
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
