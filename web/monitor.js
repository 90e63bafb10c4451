// The monitor page's entry: asks the daemon what it is and loads the matching view.
// Plain browser JavaScript, no build step; everything comes from this server (no CDN).

/** GET a JSON endpoint of this server. */
export async function getJson(path) {
  const r = await fetch(path, { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body?.error?.message ?? `${r.status} ${r.statusText}`);
  return body;
}

/** POST/DELETE JSON (the server refuses changes without a JSON content type). */
export async function sendJson(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    credentials: 'same-origin',
    body: JSON.stringify(body ?? {}),
  });
  const out = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(out?.error?.message ?? `${r.status} ${r.statusText}`);
  return out;
}

/** document.createElement with properties, attributes (data-*, class) and children; text only, never HTML. */
export function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-') || k === 'title' || k === 'for') e.setAttribute(k, String(v));
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export function setConn(text, ok) {
  const c = document.getElementById('conn');
  c.textContent = text;
  c.className = `badge ${ok ? 'ok' : 'bad'}`;
}

export function fmt(n) {
  if (typeof n !== 'number') return '-';
  return n.toLocaleString('en-US');
}

async function boot() {
  let status;
  try {
    status = await getJson('/api/status');
  } catch (err) {
    document.getElementById('loading').textContent = `Cannot reach the daemon: ${err.message}`;
    setConn('offline', false);
    return;
  }
  document.getElementById('title').textContent = `vhost-device-${status.daemon}`;
  document.getElementById('version').textContent = `${status.version} · node ${status.node}`;
  document.title = `vhost-device-${status.daemon} monitor`;
  const main = document.getElementById('main');
  main.replaceChildren();
  const view = status.daemon === 'can' ? await import('./can.js') : await import('./console.js');
  view.start(main, status);
}

boot();
