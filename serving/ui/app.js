// Freeway's dashboard: plain JavaScript over the query API (no build
// step). Every number on the page comes from a rolled-up query
// (window=all, group_by with order_by and limit, where on the chosen
// keys), never from raw cells, so the page stays fast whatever the
// number of cells behind it. The state is kept in the URL's fragment
// (#app=...&range=...), so a view can be shared or reloaded.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);

  // Functions whose values are not numbers (objects and lists): they go
  // to their own tables, not to charts.
  const STRUCTURED = new Set(['percentile', 'topk']);
  // Functions whose value over no input is 0 (a window without rows).
  const ZERO_WHEN_EMPTY = new Set(['count', 'sum', 'count_distinct']);
  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#65a30d', '#475569', '#ea580c',
    '#0d9488', '#9333ea', '#ca8a04', '#be123c', '#4f46e5', '#15803d', '#a16207', '#0369a1', '#c026d3', '#57534e'];
  // A chart draws at most this many windows on a full grid; past it, only
  // the windows that have rows.
  const MAX_GRID = 20000;
  // A chart asks for at most about this many windows: over a longer range
  // the page has Puma roll the app's windows up into longer ones
  // (window=LENGTH), so that its answers stay small however many cells
  // are behind them. Rolled-up lengths are taken from NICE when one is a
  // multiple of the app's window.
  const MAX_POINTS = 500;
  const NICE = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

  // chartStep is the window length the charts of the range ask for.
  function chartStep(app, from, to) {
    const w = app.window_seconds;
    const need = (to - from) / MAX_POINTS;
    if (need <= w) return w;
    return NICE.find((n) => n >= need && n % w === 0) || Math.ceil(need / w) * w;
  }

  const state = {
    apps: [], status: null, app: null,
    range: 3600, from: null, to: null, // from/to (Unix s) fix the range; else the last `range` seconds
    aggs: [], split: null, top: 5, topKey: null, mode: '',
    refresh: 5, timer: null, seq: 0, charts: {},
  };
  // What the page shows, for the browser test and the curious.
  const dash = window.freewayDashboard = { state, charts: state.charts, rendered: 0, errors: 0, lastError: '', askedToken: false, answers: {} };

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  // The query token, when the server asks for one (auth.query_tokens_file):
  // entered in the page, kept for this tab only (sessionStorage), sent
  // with every API call. The page itself is served without it.
  const tokenKey = 'freeway.queryToken';
  function token() {
    try { return sessionStorage.getItem(tokenKey) || ''; } catch (e) { return ''; }
  }

  function askToken(refused) {
    $('token-note').textContent = refused ? 'the token was refused: enter another' : 'this server asks for a query token (a line of its auth.query_tokens_file)';
    $('token-form').hidden = false;
    dash.askedToken = true;
  }

  async function api(path, params) {
    const u = new URL(path, location.origin);
    for (const [k, v] of params || []) u.searchParams.append(k, v);
    const headers = { Accept: 'application/json' };
    const tk = token();
    if (tk) headers.Authorization = `Bearer ${tk}`;
    const r = await fetch(u, { headers, credentials: 'same-origin' });
    let body = {};
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    if (r.status === 401) askToken(tk !== '');
    if (!r.ok) throw new Error(`GET ${u.pathname}: ${r.status} ${body.error || r.statusText}`);
    return body;
  }

  function fmt(v) {
    if (typeof v !== 'number') return v === null || v === undefined ? '–' : String(v);
    if (Number.isInteger(v)) return v.toLocaleString('en-US');
    return v.toLocaleString('en-US', { maximumSignificantDigits: 6 });
  }

  // compact writes an axis number short: 1.5k, 350M, 16.4G.
  function compact(v) {
    if (typeof v !== 'number') return '';
    const a = Math.abs(v);
    for (const [n, u] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
      if (a >= n) return +(v / n).toPrecision(3) + u;
    }
    return String(+v.toPrecision(3));
  }

  function dur(s) {
    if (s === undefined || s === null) return '';
    const a = Math.abs(s);
    const t = a < 90 ? `${Math.round(a)}s` : a < 5400 ? `${Math.round(a / 60)}m` : a < 172800 ? `${Math.round(a / 3600)}h` : `${Math.round(a / 86400)}d`;
    return s < 0 ? `-${t}` : t;
  }

  function time(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z').replace(/:00Z$/, 'Z');
  }

  // isTime: s is a Unix time in seconds that a Date holds (the page
  // writes the range with it). The fragment is anyone's to write: a link
  // with other times leaves the range as it was rather than break the page.
  const isTime = (s) => !Number.isNaN(new Date(Number(s) * 1000).getTime());

  // refreshSeconds is the refresh period a fragment asks for: 0 (off), or
  // between a second and a day, so that a link cannot have the page query
  // the server back to back (setTimeout takes a delay past 2^31 ms as 0).
  const refreshSeconds = (s) => {
    const n = Number(s) || 0;
    return n > 0 ? Math.min(86400, Math.max(1, n)) : 0;
  };

  const numericAggs = (app) => app.aggregates.filter((a) => !STRUCTURED.has(a.fn));

  // ---- the URL fragment ----

  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    const out = {};
    for (const k of ['app', 'range', 'from', 'to', 'aggs', 'split', 'top', 'key', 'mode', 'refresh']) {
      if (h.has(k)) out[k] = h.get(k);
    }
    return out;
  }

  function writeHash() {
    const h = new URLSearchParams();
    if (state.app) h.set('app', state.app.name);
    if (state.from !== null) {
      h.set('from', state.from);
      h.set('to', state.to);
    } else {
      h.set('range', state.range);
    }
    h.set('aggs', state.aggs.join(','));
    h.set('split', state.split || '');
    h.set('top', state.top);
    if (state.topKey) h.set('key', state.topKey);
    if (state.mode) h.set('mode', state.mode);
    history.replaceState(null, '', '#' + h.toString());
  }

  // ---- apps and status ----

  async function loadMeta() {
    const [apps, status] = await Promise.all([api('/api/v1/apps'), api('/api/v1/status')]);
    state.apps = apps.apps;
    state.status = status;
    dash.answers.apps = apps;
    dash.answers.status = status;
    renderNode();
    renderAppList();
  }

  function appStatus(name) {
    return ((state.status && state.status.apps) || []).find((a) => a.name === name);
  }

  function renderNode() {
    const st = state.status;
    $('node').textContent = `${st.components.join(', ')} · ${st.version || ''} · answers ${st.modes.join(' or ')}`;
    const mode = $('mode');
    const want = state.mode || st.default_mode;
    mode.replaceChildren(...st.modes.map((m) => el('option', { value: m, selected: m === want }, m)));
  }

  function renderAppList() {
    const ul = $('apps');
    if (state.apps.length === 0) {
      ul.replaceChildren(el('li', { class: 'muted' }, 'no apps configured'));
      return;
    }
    ul.replaceChildren(...state.apps.map((a) => {
      const s = appStatus(a.name);
      let behind = null;
      if (s && s.behind_seconds !== undefined) {
        const late = s.behind_seconds > 5 * a.window_seconds;
        behind = el('span', { class: 'behind' + (late ? ' late' : ''), 'data-behind': s.behind_seconds }, ` · ${dur(s.behind_seconds)} behind`);
      }
      let lag = null;
      if (s && s.lag_segments) lag = ` · ${s.lag_segments} segments to read`;
      const link = el('a', { href: '#app=' + encodeURIComponent(a.name), 'data-app': a.name, class: state.app && state.app.name === a.name ? 'selected' : '' },
        el('span', { class: 'app-name' }, a.name),
        el('span', { class: 'app-meta' }, `${a.category} · ${a.window}`, behind, lag));
      link.addEventListener('click', (ev) => {
        ev.preventDefault();
        selectApp(a.name, {});
        refresh();
      });
      return el('li', {}, link);
    }));
  }

  // ---- choosing an app and its view ----

  function selectApp(name, h) {
    const app = state.apps.find((a) => a.name === name) || state.apps[0];
    if (!app) return;
    const changed = !state.app || state.app.name !== app.name;
    state.app = app;
    const nums = numericAggs(app).map((a) => a.name);
    if (h.aggs !== undefined) state.aggs = h.aggs.split(',').filter((x) => nums.includes(x));
    else if (changed) state.aggs = nums.slice(0, 1);
    if (state.aggs.length === 0 && nums.length > 0) state.aggs = nums.slice(0, 1);
    if (h.split !== undefined) state.split = app.group_by.includes(h.split) ? h.split : '';
    else if (changed) state.split = app.group_by[0] || '';
    if (h.key !== undefined && app.group_by.includes(h.key)) state.topKey = h.key;
    else if (changed || !app.group_by.includes(state.topKey)) state.topKey = state.split || app.group_by[0] || null;
    if (h.top) state.top = Math.max(1, Math.min(20, parseInt(h.top, 10) || 5));
    if (h.from && h.to && isTime(h.from) && isTime(h.to)) {
      state.from = Number(h.from);
      state.to = Number(h.to);
    } else if (h.range) {
      state.from = state.to = null;
      state.range = Number(h.range) || 3600;
    }
    if (h.mode) state.mode = h.mode;
    if (h.refresh !== undefined) {
      state.refresh = refreshSeconds(h.refresh);
      $('refresh').value = String(state.refresh);
    }
    for (const c of Object.values(state.charts)) c.plot.destroy();
    for (const k of Object.keys(state.charts)) delete state.charts[k];
    renderAppList();
    renderDefinition();
    renderControls();
    writeHash();
  }

  function renderDefinition() {
    const a = state.app;
    $('app').hidden = false;
    $('app-name').textContent = a.name;
    const rows = [
      ['category', a.category], ['format', a.format], ['window', a.window],
      ['where', a.where || '(every line)'], ['group by', a.group_by.join(', ') || '(nothing)'],
      ['aggregates', a.aggregates.map((g) => `${g.name} = ${g.fn}(${g.field || ''})`).join(', ')],
    ];
    $('app-def').replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  }

  function renderControls() {
    const a = state.app;
    $('aggs').replaceChildren(...numericAggs(a).map((g) => {
      const box = el('input', { type: 'checkbox', value: g.name, checked: state.aggs.includes(g.name) });
      box.addEventListener('change', () => {
        state.aggs = numericAggs(a).map((x) => x.name).filter((n) => n === g.name ? box.checked : state.aggs.includes(n));
        changed();
      });
      return el('label', {}, box, ' ', g.name);
    }));
    $('split').replaceChildren(el('option', { value: '' }, '(none)'),
      ...a.group_by.map((k) => el('option', { value: k, selected: k === state.split }, k)));
    $('top-key').replaceChildren(...a.group_by.map((k) => el('option', { value: k, selected: k === state.topKey }, k)));
    $('top-key').hidden = a.group_by.length === 0;
    $('top').value = String(state.top);
    const range = $('range');
    if (state.from !== null) {
      range.value = 'fixed';
      range.querySelector('option[value=fixed]').textContent = `${time(new Date(state.from * 1000).toISOString())} … ${time(new Date(state.to * 1000).toISOString())}`;
    } else {
      range.value = String(state.range);
    }
  }

  function changed() {
    writeHash();
    refresh();
  }

  let bound = false;
  function bind() {
    // Once: start runs again after a failed first load.
    if (bound) return;
    bound = true;
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      try { sessionStorage.setItem(tokenKey, $('token').value.trim()); } catch (err) { /* storage refused */ }
      location.reload();
    });
    $('range').addEventListener('change', (e) => {
      if (e.target.value === 'fixed') return;
      state.from = state.to = null;
      state.range = Number(e.target.value);
      changed();
    });
    $('split').addEventListener('change', (e) => {
      state.split = e.target.value;
      if (state.split) {
        state.topKey = state.split;
        $('top-key').value = state.split;
      }
      changed();
    });
    $('top').addEventListener('change', (e) => {
      state.top = Number(e.target.value);
      changed();
    });
    $('top-key').addEventListener('change', (e) => {
      state.topKey = e.target.value;
      changed();
    });
    $('mode').addEventListener('change', (e) => {
      state.mode = e.target.value;
      changed();
    });
    $('refresh').addEventListener('change', (e) => {
      state.refresh = Number(e.target.value);
      schedule();
    });
    // A fragment edited by hand (or a link followed) sets the view; the
    // page's own changes replace it without this event.
    window.addEventListener('hashchange', () => {
      const h = readHash();
      if (state.apps.length > 0) {
        selectApp(h.app || (state.app && state.app.name), h);
        refresh();
      }
    });
    window.addEventListener('resize', () => {
      for (const c of Object.values(state.charts)) c.plot.setSize({ width: chartWidth(), height: 220 });
    });
  }

  // ---- queries ----

  function range() {
    if (state.from !== null) return [state.from, state.to];
    const to = Math.floor(Date.now() / 1000);
    return [to - state.range, to];
  }

  function base(from, to) {
    const p = [['app', state.app.name], ['from', String(from)], ['to', String(to)]];
    if (state.mode) p.push(['mode', state.mode]);
    return p;
  }

  // orderAgg is the aggregate that ranks keys: the first one charted.
  function orderAgg() {
    return state.aggs[0] || (numericAggs(state.app)[0] || {}).name;
  }

  function topQuery(from, to, key) {
    const p = base(from, to).concat([['window', 'all'], ['group_by', key], ['limit', String(state.top)]]);
    if (orderAgg()) p.push(['order_by', orderAgg() + ':desc']);
    return p;
  }

  async function refresh() {
    if (!state.app) return;
    const seq = ++state.seq;
    const app = state.app;
    const [from, to] = range();
    const step = chartStep(app, from, to);
    try {
      const totals = api('/api/v1/query', base(from, to).concat([['window', 'all'], ['group_by', '']]));
      const top = state.topKey ? api('/api/v1/query', topQuery(from, to, state.topKey)) : null;
      const split = state.split && state.split !== state.topKey ? api('/api/v1/query', topQuery(from, to, state.split)) : top;
      const meta = loadMeta();
      const [tot, tk, sk] = await Promise.all([totals, top, split]);
      let series = null;
      let keys = [];
      if (state.split) {
        keys = sk.rows.map((r) => r.key[state.split]);
      }
      if (!state.split || keys.length > 0) {
        const p = base(from, to).concat([['group_by', state.split || '']]);
        for (const k of keys) p.push(['where', `${state.split}:${k}`]);
        if (step !== app.window_seconds) p.push(['window', `${step}s`]);
        const windows = Math.ceil((to - from) / step) + 1;
        p.push(['limit', String(Math.max(1, windows * Math.max(1, keys.length)))]);
        series = await api('/api/v1/query', p);
      }
      await meta;
      if (seq !== state.seq || app !== state.app) return; // a newer refresh is under way
      dash.answers.totals = tot;
      dash.answers.top = tk;
      dash.answers.split = sk;
      dash.answers.series = series;
      dash.step = step;
      renderFreshness(series || tot);
      renderTotals(tot);
      renderCharts(from, to, keys, series);
      renderTopKeys(tk);
      renderStructured(tot, tk);
      renderDropped();
      renderNotes([tot, tk, sk, series]);
      $('error').hidden = true;
      $('updated').textContent = 'updated ' + new Date().toLocaleTimeString('en-GB');
      dash.rendered++;
    } catch (e) {
      dash.errors++;
      dash.lastError = String(e.message || e);
      $('error').textContent = dash.lastError;
      $('error').hidden = false;
    } finally {
      if (seq === state.seq) schedule();
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = null;
    if (state.refresh > 0) {
      state.timer = setTimeout(() => {
        if (document.hidden) schedule();
        else refresh();
      }, state.refresh * 1000);
    }
  }

  // ---- rendering ----

  function renderFreshness(ans) {
    const a = ans.as_of || {};
    const s = appStatus(state.app.name) || {};
    const parts = [`${a.mode || ''} data as of ${time(a.time)}`];
    parts.push(`watermark ${time(a.watermark)}`);
    if (s.behind_seconds !== undefined) parts.push(`${dur(s.behind_seconds)} behind`);
    if (s.lag_segments !== undefined) parts.push(`${s.lag_segments} segments to read`);
    if (s.checkpoint_age_seconds !== undefined) parts.push(`checkpoint ${dur(s.checkpoint_age_seconds)} ago`);
    if (s.shards) parts.push(`${s.shards_running} of ${s.shards} shards`);
    $('freshness').textContent = parts.join(' · ');
  }

  function renderTotals(tot) {
    const row = tot.rows[0] || { values: {} };
    $('totals').replaceChildren(...numericAggs(state.app).map((g) => {
      const v = row.values[g.name];
      return el('div', { class: 'total', 'data-agg': g.name },
        el('div', { class: 'name' }, `${g.name} · ${g.fn}${g.field ? '(' + g.field + ')' : ''}`),
        el('div', { class: 'value', 'data-value': typeof v === 'number' ? String(v) : '' }, fmt(v === undefined ? null : v)));
    }));
  }

  function chartWidth() {
    return Math.max(300, $('charts').clientWidth || 800);
  }

  // chartData lays the rows of one aggregate on the windows of the range:
  // one series per key (or one for all keys), a window without a row is
  // 0 for counts and sums, a gap for the others.
  function chartData(agg, from, to, keys, series) {
    const app = state.app;
    const w = dash.step || app.window_seconds;
    const fn = (app.aggregates.find((g) => g.name === agg) || {}).fn;
    const empty = ZERO_WHEN_EMPTY.has(fn) ? 0 : null;
    const names = state.split ? keys : [agg];
    let xs = [];
    const first = Math.ceil(from / w) * w;
    if ((to - first) / w <= MAX_GRID) {
      for (let t = first; t < to; t += w) xs.push(t);
    } else {
      xs = [...new Set(series.rows.map((r) => Date.parse(r.window_start) / 1000))].sort((a, b) => a - b);
    }
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = names.map(() => xs.map(() => empty));
    for (const r of series.rows) {
      const i = index.get(Date.parse(r.window_start) / 1000);
      const s = state.split ? keys.indexOf(r.key[state.split]) : 0;
      if (i === undefined || s < 0) continue;
      const v = r.values[agg];
      ys[s][i] = typeof v === 'number' ? v : null;
    }
    return { names, data: [xs, ...ys] };
  }

  // axisTimes labels the time axis in UTC, 24-hour: hours and minutes
  // (and seconds when the ticks are closer than a minute), with the date
  // under the first tick of each day.
  function axisTimes(u, splits) {
    const step = splits.length > 1 ? splits[1] - splits[0] : 60;
    let day = '';
    return splits.map((ts) => {
      const iso = new Date(ts * 1000).toISOString();
      const label = iso.slice(11, step < 60 ? 19 : 16);
      if (iso.slice(0, 10) === day) return label;
      day = iso.slice(0, 10);
      return label + '\n' + day;
    });
  }

  function renderCharts(from, to, keys, series) {
    const box = $('charts');
    const want = series ? state.aggs : [];
    for (const [agg, c] of Object.entries(state.charts)) {
      if (!want.includes(agg)) {
        c.plot.destroy();
        c.div.remove();
        delete state.charts[agg];
      }
    }
    if (!series) {
      box.replaceChildren(el('p', { class: 'muted' }, 'no keys in this range'));
      return;
    }
    box.querySelectorAll('p').forEach((p) => p.remove());
    for (const agg of want) {
      const { names, data } = chartData(agg, from, to, keys, series);
      let c = state.charts[agg];
      if (c && c.names.join('\u0000') !== names.join('\u0000')) {
        c.plot.destroy();
        c.div.remove();
        c = null;
      }
      if (!c) {
        const div = el('div', { class: 'chart', 'data-agg': agg });
        const title = el('h4', {}, agg + (state.split ? ` by ${state.split} (top ${keys.length})` : ''));
        div.append(title);
        box.append(div);
        const dots = data[0].length <= 30; // a point per window only when there are few
        const opts = {
          width: chartWidth(), height: 220,
          // Times in UTC, as everywhere on the page and in the API.
          tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC'),
          scales: { x: { time: true } },
          series: [{}].concat(names.map((n, i) => ({
            label: n === '' ? '(empty)' : n, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false, points: { show: dots },
          }))),
          axes: [{ values: axisTimes }, { size: 60, values: (u, vals) => vals.map(compact) }],
        };
        c = { div, names, plot: new uPlot(opts, data, div) };
        state.charts[agg] = c;
      } else {
        c.plot.setData(data);
      }
      c.data = data;
    }
    // keep the charts in the order chosen
    for (const agg of want) box.append(state.charts[agg].div);
  }

  function renderTopKeys(tk) {
    const t = $('topkeys');
    if (!tk) {
      t.replaceChildren(el('tr', {}, el('td', { class: 'muted' }, 'the app groups by nothing')));
      $('top-note').textContent = '';
      return;
    }
    const nums = numericAggs(state.app);
    const head = el('tr', {}, el('th', {}, state.topKey), ...nums.map((g) => el('th', { class: 'num' }, g.name)));
    const rows = tk.rows.map((r) => el('tr', { 'data-key': r.key[state.topKey] },
      el('td', { class: 'key' }, r.key[state.topKey] === '' ? '(empty)' : r.key[state.topKey]),
      ...nums.map((g) => {
        const v = r.values[g.name];
        return el('td', { class: 'num', 'data-agg': g.name, 'data-value': typeof v === 'number' ? String(v) : '' }, fmt(v === undefined ? null : v));
      })));
    if (rows.length === 0) rows.push(el('tr', {}, el('td', { class: 'muted', colspan: nums.length + 1 }, 'no data in this range')));
    t.replaceChildren(el('thead', {}, head), el('tbody', {}, rows));
    $('top-note').textContent = `by ${orderAgg()}, largest first` + (tk.truncated ? ` (top ${tk.rows.length}; more keys in range)` : '');
  }

  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

  // renderStructured shows the aggregates whose values are objects
  // (percentiles: {"0.5": x, ...}) and lists (top values:
  // [{"value": v, "count": n, "error": e}, ...]), over the whole range
  // and, for percentiles, for the top keys too.
  function renderStructured(tot, tk) {
    const row = tot.rows[0] || { values: {} };
    const pcts = state.app.aggregates.filter((g) => isObject(row.values[g.name]));
    $('pct-block').hidden = pcts.length === 0;
    if (pcts.length > 0) {
      const lines = [];
      for (const g of pcts) {
        lines.push({ agg: g.name, key: 'all', v: row.values[g.name] });
        for (const r of (tk && tk.rows) || []) {
          if (isObject(r.values[g.name])) lines.push({ agg: g.name, key: `${state.topKey}=${r.key[state.topKey]}`, v: r.values[g.name] });
        }
      }
      const qs = [...new Set(lines.flatMap((l) => Object.keys(l.v)))].sort((a, b) => Number(a) - Number(b));
      const head = el('tr', {}, el('th', {}, 'aggregate'), el('th', {}, 'keys'), ...qs.map((q) => el('th', { class: 'num' }, `p${Number(q) * 100}`)));
      const body = lines.map((l) => el('tr', { 'data-agg': l.agg, 'data-key': l.key }, el('td', {}, l.agg), el('td', {}, l.key),
        ...qs.map((q) => el('td', { class: 'num', 'data-q': q, 'data-value': typeof l.v[q] === 'number' ? String(l.v[q]) : '' }, fmt(l.v[q] === undefined ? null : l.v[q])))));
      $('percentiles').replaceChildren(el('thead', {}, head), el('tbody', {}, body));
    }
    const lists = state.app.aggregates.filter((g) => Array.isArray(row.values[g.name]));
    $('topk-block').hidden = lists.length === 0;
    $('topk').replaceChildren(...lists.map((g) => el('table', { class: 'data topk-table', 'data-agg': g.name },
      el('caption', {}, g.name + (g.field ? ` (${g.field})` : '')),
      el('thead', {}, el('tr', {}, el('th', {}, 'value'), el('th', { class: 'num' }, 'count'), el('th', { class: 'num' }, '± error'))),
      el('tbody', {}, row.values[g.name].map((e) => el('tr', { 'data-value': String(e.value) },
        el('td', {}, String(e.value)),
        el('td', { class: 'num', 'data-count': String(e.count) }, fmt(e.count)),
        el('td', { class: 'num' }, fmt(e.error || 0))))))));
  }

  function renderDropped() {
    const a = state.apps.find((x) => x.name === state.app.name) || {};
    const dropped = Object.entries(a.dropped || {}).filter(([, n]) => n > 0).sort();
    if (!a.dropped) {
      $('dropped').replaceChildren(el('tr', {}, el('td', { class: 'muted' }, 'not known here (only a Puma node keeps them)')));
    } else if (dropped.length === 0) {
      $('dropped').replaceChildren(el('tr', {}, el('td', { class: 'muted' }, 'none since the shards started here')));
    } else {
      // bad_value counts inputs of numeric aggregates skipped in lines
      // that were aggregated otherwise, not lines: say so on its row.
      const label = (r) => (r === 'bad_value' ? 'bad_value (numeric inputs skipped, not lines: their lines are aggregated)' : r);
      $('dropped').replaceChildren(el('thead', {}, el('tr', {}, el('th', {}, 'reason'), el('th', { class: 'num' }, 'lines'))),
        el('tbody', {}, dropped.map(([r, n]) => el('tr', { 'data-reason': r }, el('td', {}, label(r)), el('td', { class: 'num', 'data-value': String(n) }, fmt(n))))));
    }
    const rej = a.rejected || [];
    $('rejected').replaceChildren(...(rej.length === 0 ? [] : [
      el('thead', {}, el('tr', {}, el('th', {}, 'reason'), el('th', {}, 'read at'), el('th', {}, 'bucket'), el('th', {}, 'line'), el('th', {}, 'error'))),
      el('tbody', {}, rej.map((x) => el('tr', { class: 'sample', 'data-reason': x.reason },
        el('td', {}, x.reason), el('td', {}, time(x.at)), el('td', {}, x.bucket), el('td', { class: 'line' }, x.line), el('td', {}, x.error)))),
    ]));
  }

  function renderNotes(answers) {
    const notes = [];
    const partial = answers.find((a) => a && a.partial);
    if (partial) {
      notes.push('partial answer: ' + partial.missing_shards.map((m) => `${m.category}/${m.bucket} ${m.state}${m.error ? ' (' + m.error + ')' : ''}`).join(', '));
    }
    if (answers[3] && answers[3].truncated) notes.push('the chart was cut at the server\u2019s row limit: choose a shorter range');
    $('notes').textContent = notes.join(' · ');
  }

  async function start() {
    bind();
    const h = readHash();
    if (h.refresh !== undefined) {
      state.refresh = refreshSeconds(h.refresh);
      $('refresh').value = String(state.refresh);
    }
    try {
      await loadMeta();
    } catch (e) {
      dash.errors++;
      dash.lastError = String(e.message || e);
      $('error').textContent = dash.lastError;
      $('error').hidden = false;
      setTimeout(start, 5000);
      return;
    }
    if (state.apps.length === 0) return;
    selectApp(h.app || state.apps[0].name, h);
    renderNode();
    refresh();
  }

  start();
})();
