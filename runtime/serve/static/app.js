// small-agent's page: asks the agent over POST /v1/agent/runs (Server-Sent Events), shows
// each step as it streams, keeps conversations in localStorage. No dependencies.
'use strict';

const $ = (id) => document.getElementById(id);
const STORE = 'small-agent.conversations.v1';
const SETTINGS = 'small-agent.settings.v1';

let conversations = loadJson(STORE, []);
let current = null;        // the conversation shown
let running = null;        // {controller, runId, turn}
let info = null;           // GET /v1/info
let settings = Object.assign({ sag: 1, max_steps: 5, grammar: true, python: 'full', key: '' },
  loadJson(SETTINGS, {}));

function loadJson(key, fallback) {
  try { const v = JSON.parse(localStorage.getItem(key)); return v ?? fallback; } catch { return fallback; }
}
function saveConversations() {
  try { localStorage.setItem(STORE, JSON.stringify(conversations)); }
  catch (e) { setStatus('Could not save the history: ' + e.message, true); }
}
function newId() {
  const a = new Uint8Array(16); crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v; else if (k === 'text') e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}
function esc(s) {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
const PY = /(#[^\n]*)|("""[\s\S]*?"""|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')|\b(\d+(?:\.\d+)?)\b|\b(False|None|True|and|as|assert|break|class|continue|def|del|elif|else|except|finally|for|from|global|if|import|in|is|lambda|nonlocal|not|or|pass|raise|return|try|while|with|yield|print|final_answer|web_search)\b/g;
function highlight(code) {
  let out = '', last = 0;
  for (const m of code.matchAll(PY)) {
    out += esc(code.slice(last, m.index));
    const cls = m[1] ? 'com' : m[2] ? 'str' : m[3] ? 'num' : 'kw';
    out += `<span class="${cls}">${esc(m[0])}</span>`;
    last = m.index + m[0].length;
  }
  return out + esc(code.slice(last));
}
// DOM references kept on a turn without being saved with it.
function hide(obj, key, value) {
  Object.defineProperty(obj, key, { value, writable: true, enumerable: false, configurable: true });
}
function setStatus(text, err = false) {
  const s = $('status'); s.textContent = text; s.classList.toggle('err', err);
}
function authHeaders(extra = {}) {
  const h = Object.assign({}, extra);
  if (settings.key) h.Authorization = 'Bearer ' + settings.key;
  return h;
}

// ---- rendering ----------------------------------------------------------------------

function turnIndex(turn) { return current ? current.turns.indexOf(turn) : 0; }

function renderConversation() {
  const box = $('conversation');
  box.replaceChildren();
  if (!current || current.turns.length === 0) {
    box.append(el('p', { class: 'empty', id: 'empty-hint', text: 'Ask a question. The agent searches the local knowledge shard and runs Python in a sandbox; each step shows here as it happens.' }));
  } else {
    for (const t of current.turns) box.append(renderTurn(t));
  }
  renderHistory();
}

function renderTurn(turn) {
  const view = el('section', { class: 'turn', 'data-turn': String(turnIndex(turn)) });
  view.append(el('p', { class: 'question', text: turn.question }));
  if (turn.note) view.append(el('p', { class: 'note', text: turn.note }));
  const steps = el('div', { class: 'steps' });
  view.append(steps);
  const done = turn.status !== 'running';
  for (const s of turn.steps) steps.append(renderStep(turn, s, !done));
  view.append(el('div', { class: 'live-slot' }));
  hide(turn, 'view', view);
  renderEnd(turn);
  return view;
}

function renderStep(turn, s, open) {
  const bad = s.exec_error || s.parse_error;
  const d = el('details', { class: 'step' + (bad ? ' error' : ''), 'data-step': String(s.step) });
  if (open) d.open = true;
  const label = `Step ${s.step}` + (s.code ? '' : ' (no code)') + (s.exec_error ? ' — error' : '') +
    (s.final_answer != null ? ' — final answer' : '') +
    ` · ${s.gen_tokens} tokens, ${Math.round(s.llm_ms)} ms model, ${Math.round(s.exec_ms)} ms code`;
  d.append(el('summary', { text: label }));
  d.append(el('h4', { text: 'Thought' }), el('p', { class: 'thought', text: s.thought || '' }));
  if (s.code) {
    const pre = el('pre', { class: 'code' });
    const code = el('code'); code.innerHTML = highlight(s.code);
    pre.append(code);
    d.append(el('h4', { text: 'Code' }), pre);
  }
  d.append(el('h4', { text: bad ? 'Error' : 'Observation' }),
    el('pre', { class: 'obs' + (bad ? ' err' : ''), text: s.observation || '' }));
  if (s.sources && s.sources.length) {
    const links = el('p', { class: 'src-links' }, 'Sources: ');
    for (const n of s.sources) {
      links.append(el('a', { href: `#src-${turnIndex(turn)}-${n}`, class: 'src', text: `[${n}]` }));
    }
    d.append(links);
  }
  return d;
}

function renderEnd(turn) {
  const view = turn.view; if (!view) return;
  for (const c of view.querySelectorAll('.answer, .stats, .sources, .error-line')) c.remove();
  if (turn.answer != null || turn.status === 'done') {
    const a = turn.answer ? el('div', { class: 'answer', text: turn.answer })
      : el('div', { class: 'answer none', text: turn.cancelled ? 'Stopped before an answer.' : 'No answer.' });
    view.append(a);
  }
  if (turn.error) view.append(el('p', { class: 'note error-line', text: 'Error: ' + turn.error }));
  if (turn.totals) {
    const t = turn.totals;
    view.append(el('p', { class: 'stats', text:
      `${t.steps} step${t.steps === 1 ? '' : 's'} · ${(t.total_ms / 1000).toFixed(1)} s · ` +
      `${t.prompt_tokens} prompt tokens (${t.cached_tokens} cached), ${t.gen_tokens} generated · ` +
      `model ${(t.llm_ms / 1000).toFixed(1)} s, code ${(t.exec_ms / 1000).toFixed(2)} s` +
      (turn.cancelled ? ' · stopped' : '') }));
  }
  if (turn.sources.length) {
    const box = el('details', { class: 'sources' });
    box.open = true;
    box.append(el('summary', { text: `Sources (${turn.sources.length})` }));
    const ol = el('ol');
    for (const p of turn.sources) {
      ol.append(el('li', { id: `src-${turnIndex(turn)}-${p.n}`, value: String(p.n) },
        el('div', { class: 'title', text: p.title }), el('div', { class: 'text', text: p.text })));
    }
    box.append(ol);
    view.append(box);
  }
}

function renderHistory() {
  const ul = $('history-list');
  ul.replaceChildren();
  for (const c of [...conversations].reverse()) {
    const li = el('li', { class: current && c.id === current.id ? 'current' : '' });
    const open = el('button', { type: 'button', class: 'open', title: c.title || 'Untitled', text: c.title || 'Untitled' });
    open.addEventListener('click', () => { if (!running) { current = c; renderConversation(); } });
    const del = el('button', { type: 'button', class: 'del', title: 'Delete this conversation', 'aria-label': 'Delete ' + (c.title || 'conversation'), text: '×' });
    del.addEventListener('click', () => {
      if (running && current === c) return;
      conversations = conversations.filter((x) => x !== c);
      if (current === c) current = null;
      saveConversations(); renderConversation();
    });
    li.append(open, del);
    ul.append(li);
  }
}

// ---- asking -------------------------------------------------------------------------

function setRunning(on) {
  $('ask').disabled = on; $('stop').disabled = !on; $('new-conv').disabled = on;
  if (!on) $('question').focus();
}

async function readSse(body, onEvent) {
  const reader = body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i + 2);
      let name = 'message'; const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) onEvent(name, JSON.parse(data.join('\n')));
    }
  }
}

function liveStep(turn, step) {
  const slot = turn.view.querySelector('.live-slot');
  slot.replaceChildren();
  const d = el('details', { class: 'step live', 'data-step': String(step) });
  d.open = true;
  d.append(el('summary', { text: `Step ${step} — generating…` }));
  const pre = el('pre', { class: 'live' });
  d.append(pre);
  slot.append(d);
  hide(turn, 'livePre', pre);
}

function onEvent(turn, name, d) {
  switch (name) {
    case 'run':
      running.runId = d.run_id;
      turn.settings = d.settings;
      if (!d.continued && turnIndex(turn) > 0) {
        turn.note = 'The server no longer held this conversation: the agent started afresh (earlier turns and Python variables are not carried over).';
        turn.view.querySelector('.question').after(el('p', { class: 'note', text: turn.note }));
      }
      setStatus('Thinking…');
      break;
    case 'step_start':
      liveStep(turn, d.step);
      setStatus(`Step ${d.step}…`);
      break;
    case 'token':
      if (!turn.livePre) liveStep(turn, d.step);
      turn.livePre.textContent += d.text;
      break;
    case 'redo':
      // The step starts over: what was streamed of it is no longer the step.
      if (turn.livePre) turn.livePre.textContent = '';
      setStatus(`Step ${d.step}: ${d.reason}…`);
      break;
    case 'sources':
      for (const p of d.passages) if (!turn.sources.some((q) => q.n === p.n)) turn.sources.push(p);
      renderEnd(turn);
      break;
    case 'step': {
      turn.steps.push(d);
      turn.view.querySelector('.live-slot').replaceChildren();
      hide(turn, 'livePre', null);
      turn.view.querySelector('.steps').append(renderStep(turn, d, true));
      saveConversations();
      break;
    }
    case 'answer':
      turn.answer = d.answer;
      renderEnd(turn);
      break;
    case 'done':
      turn.status = 'done';
      turn.totals = d.totals;
      turn.cancelled = d.cancelled;
      turn.trajectory = d.trajectory;
      if (d.run && d.run.error && !d.cancelled) turn.error = d.run.error;
      turn.sources = d.sources;
      turn.view.querySelector('.live-slot').replaceChildren();
      for (const s of turn.view.querySelectorAll('details.step')) s.open = false;
      renderEnd(turn);
      setStatus(d.cancelled ? 'Stopped.' : 'Answered.');
      break;
    case 'error':
      turn.error = d.message;
      renderEnd(turn);
      setStatus(d.message, true);
      break;
  }
}

async function ask(question) {
  if (!current) {
    current = { id: newId(), title: '', created: Date.now(), turns: [] };
    conversations.push(current);
  }
  const turn = { question, steps: [], sources: [], answer: null, totals: null, trajectory: null, status: 'running' };
  current.turns.push(turn);
  if (!current.title) current.title = question.slice(0, 80);
  saveConversations();
  const box = $('conversation');
  const hint = $('empty-hint'); if (hint) hint.remove();
  box.append(renderTurn(turn));
  renderHistory();
  const controller = new AbortController();
  running = { controller, runId: null, turn };
  setRunning(true);
  setStatus('Waiting for a session…');
  try {
    const res = await fetch('/v1/agent/runs', {
      method: 'POST',
      headers: authHeaders({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
      body: JSON.stringify({
        question, stream: true, conversation_id: current.id,
        sag: Number(settings.sag), max_steps: Number(settings.max_steps), grammar: !!settings.grammar,
        python: settings.python,
      }),
      signal: controller.signal,
    });
    if (!res.ok) {
      const j = await res.json().catch(() => null);
      let msg = (j && j.error && j.error.message) || `HTTP ${res.status}`;
      if (res.status === 503 && res.headers.get('Retry-After')) msg += ` (retry in ${res.headers.get('Retry-After')} s)`;
      if (res.status === 401) msg += ' — set the API key in Settings';
      turn.error = msg; setStatus(msg, true);
    } else {
      await readSse(res.body, (name, data) => onEvent(turn, name, data));
      if (turn.status === 'running' && !turn.error) turn.error = 'the connection ended before the run did';
    }
  } catch (e) {
    if (e.name === 'AbortError') { turn.cancelled = true; setStatus('Stopped.'); }
    else { turn.error = String(e.message || e); setStatus(turn.error, true); }
  } finally {
    if (turn.status === 'running') turn.status = turn.cancelled ? 'done' : 'failed';
    running = null;
    setRunning(false);
    renderEnd(turn);
    saveConversations();
  }
}

async function stop() {
  if (!running) return;
  const r = running;
  setStatus('Stopping…');
  if (r.runId) {
    // The server stops decoding and the sandbox at once; the stream then ends with `done`.
    try { await fetch('/v1/agent/runs/' + encodeURIComponent(r.runId), { method: 'DELETE', headers: authHeaders() }); }
    catch { /* the abort below still ends it */ }
    setTimeout(() => { if (running === r) r.controller.abort(); }, 2000);
  } else {
    r.controller.abort();
  }
}

function exportJsonl() {
  if (!current) { setStatus('No conversation to export.', true); return; }
  const lines = current.turns.filter((t) => t.trajectory).map((t) => JSON.stringify(t.trajectory));
  if (!lines.length) { setStatus('This conversation has no finished answer to export yet.', true); return; }
  const blob = new Blob([lines.join('\n') + '\n'], { type: 'application/x-ndjson' });
  const a = el('a', { href: URL.createObjectURL(blob), download: `small-agent-${current.id.slice(0, 8)}.jsonl` });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 5000);
}

// ---- settings and about ---------------------------------------------------------------

function openSettings() {
  $('set-sag').value = settings.sag; $('set-steps').value = settings.max_steps;
  $('set-grammar').checked = !!settings.grammar; $('set-python').value = settings.python;
  $('set-key').value = settings.key || '';
  $('settings').showModal();
}

function saveSettings() {
  settings = {
    sag: Math.max(1, Number($('set-sag').value) || 1),
    max_steps: Math.max(1, Number($('set-steps').value) || 5),
    grammar: $('set-grammar').checked,
    python: $('set-python').value,
    key: $('set-key').value.trim(),
  };
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
  loadInfo();
}

async function loadInfo() {
  try {
    const r = await fetch('/v1/info', { headers: authHeaders() });
    if (!r.ok) { if (r.status === 401) setStatus('This server needs an API key: set it in Settings.', true); return; }
    info = await r.json();
    const def = info.defaults;
    if (!localStorage.getItem(SETTINGS)) {
      settings.sag = def.sag; settings.max_steps = def.max_steps; settings.grammar = def.grammar;
    }
    settings.python = info.python;
    $('set-sag').max = def.max_sag; $('set-steps').max = def.max_steps_cap;
    for (const o of $('set-python').options) o.disabled = o.value !== info.python;
    $('python-hint').textContent = `This server runs the ${info.python} interpreter (choose another with small-agent serve --python).`;
  } catch (e) { setStatus('Cannot reach the server: ' + e.message, true); }
}

function openAbout() {
  const dl = $('about-list'); dl.replaceChildren();
  const mb = (b) => (b / 1048576).toFixed(1) + ' MiB';
  const rows = info ? [
    ['Version', info.version],
    ['Model', `${info.model.id} (${mb(info.model.size_bytes)})`],
    ['Model file', info.model.path],
    ['Adapter', info.model.adapter || 'none'],
    ['Prompt', info.prompt],
    ['Shard', info.shard ? `${info.shard.path} (${mb(info.shard.size_bytes)})` : 'none (no web_search)'],
    ['Interpreter', info.python],
    ['Sessions', `${info.sessions} (${info.sessions_why}), ${info.threads_per_session} threads each, queue ${info.queue}`],
    ['API key', info.auth ? 'required' : 'not required (loopback only)'],
  ] : [['Server', 'not reachable']];
  for (const [k, v] of rows) dl.append(el('dt', { text: k }), el('dd', { text: String(v) }));
  $('about').showModal();
}

// ---- wiring -----------------------------------------------------------------------------

$('ask-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const q = $('question').value.trim();
  if (!q || running) return;
  $('question').value = '';
  ask(q);
});
$('question').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); $('ask-form').requestSubmit(); }
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && running) { e.preventDefault(); stop(); }
  if (e.altKey && (e.key === 'n' || e.key === 'N') && !running) { e.preventDefault(); $('new-conv').click(); }
});
$('stop').addEventListener('click', stop);
$('new-conv').addEventListener('click', () => { current = null; renderConversation(); $('question').focus(); });
$('export').addEventListener('click', exportJsonl);
$('open-settings').addEventListener('click', openSettings);
$('settings-form').addEventListener('submit', (e) => { if (e.submitter && e.submitter.value === 'save') saveSettings(); });
$('open-about').addEventListener('click', openAbout);

// Conversations interrupted by a reload are marked as such.
for (const c of conversations) for (const t of c.turns) if (t.status === 'running') { t.status = 'failed'; t.error = 'interrupted (the page was closed or reloaded)'; }
current = conversations.length ? conversations[conversations.length - 1] : null;
renderConversation();
loadInfo();
$('question').focus();
