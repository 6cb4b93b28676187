// The Grove dashboard: polls the coordinator's JSON API (docs/dashboard.md) once a second and
// draws the job list and the selected job with uPlot (vendored under /static/vendor). The auth
// cookie travels with every request (same origin); nothing here changes a job.
'use strict';
(() => {
  const POLL_MS = 1000;
  const METRICS_PAGE = 5000;  // steps per /metrics request
  const MAX_PAGES = 20;       // pages fetched per poll, so one poll stays bounded

  const dash = {
    jobId: null,       // the selected job
    job: null,         // its latest /api/jobs/ID answer
    serverNow: 0,      // the coordinator's clock at the latest answer (ms)
    byStep: new Map(), // step -> StepMetric (the latest revision wins)
    afterStep: 0,      // metrics fetched up to this step
    memory: {},        // rank -> [[time_ms, rss, device|null], ...]
    charts: {},        // id -> uPlot
    configShown: null, // job id whose config is on screen
    layer: null,       // MoE layer shown in the heat map
    polls: 0,
    errors: 0,
  };
  window.groveDashboard = dash;  // for tests and the curious

  const $ = (id) => document.getElementById(id);
  const num = (v) => (v === undefined || v === null ? 0 : Number(v));
  const has = (v) => v !== undefined && v !== null;

  function fmt(v, digits = 4) {
    if (!has(v) || Number.isNaN(Number(v))) return '–';
    const x = Number(v);
    if (x !== 0 && (Math.abs(x) >= 1e6 || Math.abs(x) < 1e-3)) return x.toExponential(2);
    return Number(x.toPrecision(digits)).toLocaleString('en-US');
  }
  function bytes(v) {
    if (!has(v)) return '–';
    let x = Number(v);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let u = 0;
    while (x >= 1024 && u < units.length - 1) { x /= 1024; ++u; }
    return (u === 0 ? x : x.toFixed(1)) + ' ' + units[u];
  }
  function clock(ms) {
    return ms ? new Date(Number(ms)).toLocaleTimeString('en-GB') : '–';
  }
  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') e.className = v; else if (k === 'dataset') Object.assign(e.dataset, v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  function stateBadge(s) { return el('span', { class: 'state ' + s }, s); }

  async function api(path) {
    const r = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
    if (r.status === 401) throw new Error('refused (401): open /?token=TOKEN to sign in');
    if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
    return r.json();
  }

  // ---- job list ---------------------------------------------------------------------------------

  function layoutText(l) {
    if (!l) return '–';
    return `tp${num(l.tp)} cp${num(l.cp)} ep${num(l.ep)} dp${num(l.dp)}`;
  }

  function renderJobs(jobs) {
    const body = $('job-list').tBodies[0];
    body.replaceChildren(...jobs.map((j) => {
      const tr = el('tr', { dataset: { job: j.id } },
        el('td', {}, j.id), el('td', {}, j.spec?.name || ''), el('td', {}, stateBadge(j.state)),
        el('td', {}, `${num(j.last_step)} / ${num(j.total_steps)}`),
        el('td', {}, num(j.last_step) > 0 ? fmt(j.last_loss) : '–'),
        el('td', {}, num(j.last_step) > 0 ? fmt(j.tokens_per_s) : '–'),
        el('td', {}, layoutText(j.layout)), el('td', {}, clock(j.updated_unix_ms)));
      if (j.id === dash.jobId) tr.classList.add('selected');
      tr.addEventListener('click', () => { location.hash = 'job=' + j.id; });
      return tr;
    }));
    $('no-jobs').hidden = jobs.length > 0;
  }

  function selectedFromHash() {
    const m = /job=([A-Za-z0-9_.-]+)/.exec(location.hash);
    return m ? m[1] : null;
  }

  function select(id) {
    if (id === dash.jobId) return;
    dash.jobId = id;
    dash.job = null;
    dash.byStep = new Map();
    dash.afterStep = 0;
    dash.memory = {};
    dash.configShown = null;
    dash.layer = null;
    for (const c of Object.values(dash.charts)) c.destroy();
    dash.charts = {};
  }

  // ---- the selected job -------------------------------------------------------------------------

  // "812 ms measured, 640 ms predicted (+27 %)": the latest measured step beside the cost
  // model's prediction for the job's layout (absent without the coordinator's cluster).
  function stepTimeText(j) {
    const measured = has(j.last_step_ms) ? fmt(j.last_step_ms) + ' ms measured' : 'not measured yet';
    const p = j.layout?.predicted_step_ms;
    if (!has(p)) return measured + ', no prediction';
    let s = `${measured}, ${fmt(p)} ms predicted`;
    if (has(j.last_step_ms) && num(p) > 0) {
      const err = 100 * (num(j.last_step_ms) / num(p) - 1);
      s += ` (measured ${err >= 0 ? '+' : ''}${err.toFixed(0)} %)`;
    }
    return s;
  }

  // "1.2 MiB of 5.0 MiB (LSH saved 76.0 %)": the last step's expert all-to-all bytes of rank 0,
  // sent and what the plain all-to-all would have sent (equal without LSH or in its warm-up).
  function a2aText(j) {
    if (!has(j.last_a2a_bytes_sent) || !has(j.last_a2a_bytes_uncompressed)) return '–';
    const sent = num(j.last_a2a_bytes_sent);
    const raw = num(j.last_a2a_bytes_uncompressed);
    if (!(raw > 0)) return bytes(sent) + ' sent';
    return `${bytes(sent)} of ${bytes(raw)} (LSH saved ${(100 * (1 - sent / raw)).toFixed(1)} %)`;
  }

  function renderSummary(j) {
    $('job-title').replaceChildren(j.id + (j.spec?.name ? ' · ' + j.spec.name : ''), ' ',
      stateBadge(j.state));
    const items = [
      ['step', `${num(j.last_step)} / ${num(j.total_steps)}`],
      ['loss', num(j.last_step) > 0 ? fmt(j.last_loss) : '–'],
      ['val loss', has(j.last_val_loss) ? fmt(j.last_val_loss) : '–'],
      ['tokens/s', num(j.last_step) > 0 ? fmt(j.tokens_per_s) : '–'],
      ['MFU', has(j.last_mfu) ? fmt(100 * j.last_mfu, 3) + ' %' : '–'],
      ['step time', stepTimeText(j)],
      ['all-to-all (last step)', a2aText(j), 'a2a-last'],
      ['attempt', num(j.attempt)],
      ['created', clock(j.created_unix_ms)],
    ];
    $('job-summary').replaceChildren(...items.map(([k, v, id]) =>
      el('span', id ? { id } : {}, k + ': ', el('b', {}, v))));
    const reason = el('span', { id: 'job-reason' }, j.reason || '');
    $('job-summary').append(reason);
  }

  function renderTimeline(j) {
    const ts = j.transitions || [];
    const bar = $('timeline');
    const list = $('transitions');
    if (!ts.length) { bar.replaceChildren(); list.replaceChildren(); return; }
    const end = ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(j.state)
      ? num(ts[ts.length - 1].time_unix_ms) : dash.serverNow;
    const start = num(ts[0].time_unix_ms);
    const total = Math.max(1, end - start);
    bar.replaceChildren(...ts.map((t, i) => {
      const from = num(t.time_unix_ms);
      const to = i + 1 < ts.length ? num(ts[i + 1].time_unix_ms) : end;
      const d = el('div', { class: t.to, title: `${t.to} ${clock(from)}: ${t.reason || ''}` });
      d.style.flexGrow = String(Math.max(0.002, (to - from) / total));
      return d;
    }));
    list.replaceChildren(...ts.map((t) => el('li', {},
      `${clock(t.time_unix_ms)} ${t.from || '∅'} → ${t.to}: ${t.reason || ''}`)));
  }

  function renderLayout(j) {
    const l = j.layout || {};
    const rows = [
      ['world size', num(l.world_size)],
      ['tp × cp × ep × dp', `${num(l.tp)} × ${num(l.cp)} × ${num(l.ep)} × ${num(l.dp)}`],
      ['sequence parallel', l.sequence_parallel ? 'yes' : 'no'],
      ['recompute', l.recompute || 'none'],
      ['memory per device', bytes(l.bytes_per_device) +
        (num(l.device_memory_bytes) > 0 ? ' of ' + bytes(l.device_memory_bytes) : '')],
      ['plan', l.explanation || ''],
      ['predicted step', has(l.predicted_step_ms) ? fmt(l.predicted_step_ms) + ' ms' : '–'],
      ['prediction', l.prediction_note || ''],
    ];
    $('layout').replaceChildren(...rows.map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, v))));
  }

  function renderWorkers(j) {
    const body = $('workers').tBodies[0];
    body.replaceChildren(...(j.workers || []).map((w) => {
      const age = (dash.serverNow - num(w.last_heartbeat_unix_ms)) / 1000;
      const status = w.exited ? `exited ${num(w.exit_code)}` : 'live';
      return el('tr', { dataset: { rank: num(w.rank) } },
        el('td', {}, num(w.rank)), el('td', {}, w.host || ''), el('td', {}, num(w.pid)),
        el('td', {}, w.devices || ''), el('td', {}, num(w.step)), el('td', {}, bytes(w.memory_bytes)),
        el('td', {}, bytes(w.peak_memory_bytes)),
        el('td', {}, has(w.device_memory_bytes) ? bytes(w.device_memory_bytes) : '–'),
        el('td', {}, w.exited ? '–' : age.toFixed(1) + ' s ago'), el('td', {}, status));
    }));
  }

  function renderConfig(j) {
    if (dash.configShown === j.id || !j.resolved_config_json) return;
    let text = j.resolved_config_json;
    try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* show it raw */ }
    $('config').textContent = text;
    dash.configShown = j.id;
  }

  // ---- charts -----------------------------------------------------------------------------------

  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777',
    '#65a30d'];

  function chartWidth(div) { return Math.max(300, div.clientWidth || div.parentElement.clientWidth - 30); }

  // Draws (or updates) chart `id` with x values and series; recreated when the series change.
  function plot(id, xs, series, opts = {}) {
    const div = $(id);
    const empty = document.querySelector(`[data-empty-for="${id}"]`);
    const points = xs.length;
    div.dataset.points = String(points);
    if (empty) empty.hidden = points > 0;
    if (!points) {
      if (dash.charts[id]) { dash.charts[id].destroy(); delete dash.charts[id]; }
      return;
    }
    const key = series.map((s) => s.label).join('|');
    const data = [xs, ...series.map((s) => s.values)];
    let c = dash.charts[id];
    if (c && c.groveKey !== key) { c.destroy(); c = null; }
    if (!c) {
      c = new uPlot({
        width: chartWidth(div),
        height: 220,
        scales: { x: { time: !!opts.time } },
        axes: [{ label: opts.xLabel || 'step' }, { label: opts.yLabel || '',
          size: opts.yValues ? 84 : 60, values: opts.yValues }],
        series: [{ label: opts.xLabel || 'step', value: opts.xValue }, ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color || COLORS[i % COLORS.length],
          width: 1.5,
          spanGaps: true,
          points: { show: s.points || false, size: 5 },
          value: opts.yValue,
        }))],
        legend: { live: true },
      }, data, div);
      c.groveKey = key;
      dash.charts[id] = c;
    } else {
      c.setData(data);
    }
  }

  function renderCharts() {
    const steps = [...dash.byStep.keys()].sort((a, b) => a - b);
    const ms = steps.map((s) => dash.byStep.get(s));
    const bytesAxis = (u, vals) => vals.map((v) => bytes(v));

    plot('loss-chart', steps, [
      { label: 'train', values: ms.map((m) => num(m.loss)) },
      { label: 'validation', values: ms.map((m) => (m.has_val_loss ? num(m.val_loss) : null)),
        points: true },
    ], { yLabel: 'loss' });
    plot('tps-chart', steps, [{ label: 'tokens/s', values: ms.map((m) => num(m.tokens_per_s)) }],
      { yLabel: 'tokens/s' });

    const predicted = dash.job?.layout?.predicted_step_ms;
    const stepSeries = [{ label: 'measured', values: ms.map((m) => num(m.step_ms)) }];
    if (has(predicted)) stepSeries.push({ label: 'predicted', values: ms.map(() => num(predicted)) });
    plot('step-chart', steps, stepSeries, { yLabel: 'ms' });
    $('step-summary').textContent = dash.job ? stepTimeText(dash.job) +
      (has(predicted) ? '' : ' (' + (dash.job.layout?.prediction_note || 'no prediction') + ')') : '';

    const mfuSteps = steps.filter((s) => has(dash.byStep.get(s).mfu));
    plot('mfu-chart', mfuSteps,
      [{ label: 'MFU %', values: mfuSteps.map((s) => 100 * num(dash.byStep.get(s).mfu)) }],
      { yLabel: '%' });

    const a2a = steps.filter((s) => {
      const m = dash.byStep.get(s);
      return has(m.a2a_bytes_sent) || has(m.a2a_bytes_uncompressed);
    });
    const sent = a2a.map((s) => (has(dash.byStep.get(s).a2a_bytes_sent) ? num(dash.byStep.get(s).a2a_bytes_sent) : null));
    const raw = a2a.map((s) => (has(dash.byStep.get(s).a2a_bytes_uncompressed) ? num(dash.byStep.get(s).a2a_bytes_uncompressed) : null));
    plot('a2a-chart', a2a, [
      { label: 'sent (LSH)', values: sent },
      { label: 'uncompressed', values: raw },
    ], { yLabel: 'bytes', yValues: bytesAxis, yValue: (u, v) => (v === null ? '–' : bytes(v)) });
    const totSent = sent.reduce((a, v) => a + (v || 0), 0);
    const totRaw = raw.reduce((a, v) => a + (v || 0), 0);
    $('a2a-summary').textContent = a2a.length && totRaw > 0
      ? `rank 0 over ${a2a.length} steps: ${bytes(totSent)} sent of ${bytes(totRaw)} uncompressed ` +
        `(LSH saved ${(100 * (1 - totSent / totRaw)).toFixed(1)} %)`
      : '';

    renderMemory();
    renderHeatmap(steps);
  }

  function renderMemory() {
    const ranks = Object.keys(dash.memory).map(Number).sort((a, b) => a - b);
    const times = new Set();
    for (const r of ranks) for (const s of dash.memory[r]) times.add(s[0]);
    const xs = [...times].sort((a, b) => a - b);
    const index = new Map(xs.map((t, i) => [t, i]));
    const series = [];
    for (const r of ranks) {
      const rss = new Array(xs.length).fill(null);
      const dev = new Array(xs.length).fill(null);
      let anyDev = false;
      for (const [t, m, d] of dash.memory[r]) {
        rss[index.get(t)] = m;
        if (d !== null) { dev[index.get(t)] = d; anyDev = true; }
      }
      series.push({ label: `rank ${r} host`, values: rss, color: COLORS[r % COLORS.length] });
      if (anyDev) series.push({ label: `rank ${r} device`, values: dev });
    }
    plot('memory-chart', xs.map((t) => t / 1000), series, {
      time: true, xLabel: 'time', yLabel: 'bytes',
      yValues: (u, vals) => vals.map((v) => bytes(v)),
      yValue: (u, v) => (v === null ? '–' : bytes(v)),
    });
  }

  // Expert load as a heat map: x = step, y = expert, colour = the expert's share of the layer's
  // tokens relative to a balanced share (1/E): blue below, white at balance, red above.
  function renderHeatmap(steps) {
    const canvas = $('expert-heatmap');
    const layers = new Set();
    const rows = [];  // [step, ExpertLoad] for the chosen layer
    for (const s of steps) for (const l of dash.byStep.get(s).expert_load || []) layers.add(num(l.layer));
    const layerList = [...layers].sort((a, b) => a - b);
    const empty = document.querySelector('[data-empty-for="expert-heatmap"]');
    const select = $('moe-layer');
    if (!layerList.length) {
      canvas.hidden = true; $('moe-layer-label').hidden = true; empty.hidden = false;
      canvas.dataset.steps = '0'; $('heat-info').textContent = '';
      return;
    }
    if (dash.layer === null || !layers.has(dash.layer)) dash.layer = layerList[0];
    if (select.options.length !== layerList.length) {
      select.replaceChildren(...layerList.map((l) => el('option', { value: l }, l)));
      select.onchange = () => { dash.layer = Number(select.value); renderCharts(); };
    }
    select.value = String(dash.layer);
    for (const s of steps) {
      const l = (dash.byStep.get(s).expert_load || []).find((x) => num(x.layer) === dash.layer);
      if (l && l.tokens && l.tokens.length) rows.push([s, l.tokens.map(Number)]);
    }
    canvas.hidden = false; $('moe-layer-label').hidden = false; empty.hidden = true;
    canvas.dataset.steps = String(rows.length);
    if (!rows.length) return;
    const experts = Math.max(...rows.map((r) => r[1].length));
    const width = Math.max(300, Math.min(1200, canvas.parentElement.clientWidth - 30));
    const height = Math.min(320, Math.max(120, experts * 12));
    const left = 34, bottom = 18;
    canvas.width = width; canvas.height = height + bottom;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const cols = Math.min(rows.length, width - left);
    const cw = (width - left) / cols, rh = height / experts;
    const color = (ratio) => {  // ratio = share / balanced share
      const t = Math.max(-1, Math.min(1, Math.log2(Math.max(ratio, 1e-6)) / 2));
      const a = Math.abs(t);
      const [r, g, b] = t < 0 ? [37, 99, 235] : [220, 38, 38];
      return `rgb(${Math.round(255 + (r - 255) * a)},${Math.round(255 + (g - 255) * a)},${Math.round(255 + (b - 255) * a)})`;
    };
    let worst = 0;
    for (let c = 0; c < cols; ++c) {
      // Columns average the steps they cover.
      const lo = Math.floor((c * rows.length) / cols), hi = Math.floor(((c + 1) * rows.length) / cols);
      const share = new Array(experts).fill(0);
      for (let i = lo; i < hi; ++i) {
        const t = rows[i][1];
        const sum = t.reduce((a, v) => a + v, 0) || 1;
        t.forEach((v, e) => { share[e] += v / sum / (hi - lo); });
      }
      for (let e = 0; e < experts; ++e) {
        const ratio = share[e] * experts;
        worst = Math.max(worst, ratio);
        ctx.fillStyle = color(ratio);
        ctx.fillRect(left + c * cw, e * rh, Math.ceil(cw), Math.ceil(rh));
      }
    }
    ctx.fillStyle = '#6b7280';
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillText('E0', 4, Math.min(rh, 12) + 1);
    ctx.fillText('E' + (experts - 1), 4, height - 2);
    ctx.fillText('step ' + rows[0][0], left, height + 13);
    const lastLabel = 'step ' + rows[rows.length - 1][0];
    ctx.fillText(lastLabel, width - ctx.measureText(lastLabel).width - 2, height + 13);
    const latest = rows[rows.length - 1][1];
    const sum = latest.reduce((a, v) => a + v, 0) || 1;
    $('heat-info').textContent = `layer ${dash.layer}: ${experts} experts, ${rows.length} steps; ` +
      `latest step max/balanced = ${(Math.max(...latest) / (sum / experts)).toFixed(2)}; ` +
      `colour: share ÷ balanced share, blue ¼ · white 1 · red 4 (worst ${worst.toFixed(2)})`;
  }

  // ---- polling ----------------------------------------------------------------------------------

  async function fetchMetrics(id) {
    for (let page = 0; page < MAX_PAGES; ++page) {
      const r = await api(`/api/jobs/${id}/metrics?after_step=${dash.afterStep}&limit=${METRICS_PAGE}`);
      if (id !== dash.jobId) return;
      const ms = r.metrics || [];
      for (const m of ms) {
        const s = num(m.step);
        dash.byStep.set(s, m);
        dash.afterStep = Math.max(dash.afterStep, s);
      }
      if (ms.length < METRICS_PAGE) return;
    }
  }

  async function poll() {
    try {
      const list = await api('/api/jobs');
      dash.serverNow = num(list.now_unix_ms);
      const jobs = list.list?.jobs || [];
      const wanted = selectedFromHash() || (jobs.length ? jobs[0].id : null);
      select(wanted);
      renderJobs(jobs);
      $('job').hidden = !dash.jobId;
      if (dash.jobId) {
        const id = dash.jobId;
        const [j, mem] = await Promise.all([api(`/api/jobs/${id}`), api(`/api/jobs/${id}/memory`)]);
        await fetchMetrics(id);
        if (id === dash.jobId) {
          dash.job = j.job;
          dash.serverNow = num(j.now_unix_ms);
          dash.memory = mem.ranks || {};
          renderSummary(dash.job);
          renderTimeline(dash.job);
          renderLayout(dash.job);
          renderWorkers(dash.job);
          renderConfig(dash.job);
          renderCharts();
        }
      }
      dash.polls += 1;
      $('status').textContent = `live · updated ${clock(dash.serverNow)}`;
      $('status').classList.remove('error');
    } catch (e) {
      dash.errors += 1;
      $('status').textContent = String(e.message || e);
      $('status').classList.add('error');
    }
    setTimeout(poll, POLL_MS);
  }

  window.addEventListener('hashchange', () => select(selectedFromHash()));
  window.addEventListener('resize', () => {
    for (const [id, c] of Object.entries(dash.charts)) c.setSize({ width: chartWidth($(id)), height: 220 });
  });
  poll();
})();
