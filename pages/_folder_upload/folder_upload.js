// The Data page's folder picker: pack the picked folder into one uncompressed .zip in the browser and hand it
// to the page's hidden single-file uploader, so the whole folder travels as one request.
//
// Why: Chromium sends a directory upload as one request per file, many at a time; with ~2,000 files some of
// them fail (net::ERR_INSUFFICIENT_RESOURCES) and the rest arrive without a word. One archive cannot arrive in
// part. The archive stores files as they are (photos do not compress), so packing only costs a CRC-32 per
// file, and its parts are the picked File objects themselves: the browser streams them from disk when it sends,
// so its memory stays flat however large the folder. A manifest names every picked file (including those the
// browser could not read) so the server can account for each of them.
//
// Streamlit's component protocol (apiVersion 1), by hand: no build step and nothing fetched at run time.
"use strict";

const MANIFEST_NAME = ".studio-manifest.json";
const MANIFEST_FORMAT = "efficientnet-studio/folder-manifest";
const ZIP_MAX_ENTRIES = 65535;         // a plain (non-Zip64) archive's limit
const ZIP_MAX_BYTES = 0xffffffff;      // likewise: offsets and sizes are 32-bit
const READERS = 16;                    // files read at once while packing

const ui = {
  choose: document.getElementById("choose"),
  input: document.getElementById("folder"),
  progress: document.getElementById("progress"),
  status: document.getElementById("status"),
};
let args = {};         // from Python: target_key, round, max_bytes, max_bytes_rule, max_files
let sentRound = null;  // the round whose uploader got the archive; a new round means the server took it
let sent = null;       // {name, files, bytes, started} of the archive last handed over
let busy = false;      // packing or sending: the button stays off until the server has the archive
let disabled = false;  // the page disabled the widget

// ------------------------------------------------------------------------------------------ protocol
function send(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data || {}), "*");
}

function fitHeight() {
  send("streamlit:setFrameHeight", { height: Math.ceil(document.body.scrollHeight) + 2 });
}

window.addEventListener("message", (event) => {
  const message = event.data;
  if (event.source !== window.parent || !message || message.type !== "streamlit:render") return;
  args = message.args || {};
  applyTheme(message.theme);
  disabled = Boolean(message.disabled);
  if (sentRound !== null && args.round !== sentRound) {  // the server unpacked it and made a fresh uploader
    sentRound = null;
    busy = false;
    const seconds = ((performance.now() - sent.started) / 1000).toFixed(1);
    say(`Sent ${sent.name}: ${count(sent.files)} files, ${size(sent.bytes)}, in ${seconds} s.`);
    ui.progress.hidden = true;
  }
  ui.choose.disabled = disabled || busy;  // render messages also come on every resize
  fitHeight();
});

function applyTheme(theme) {
  if (!theme) return;
  const style = document.documentElement.style;
  if (theme.primaryColor) style.setProperty("--primary", theme.primaryColor);
  if (theme.textColor) style.setProperty("--text", theme.textColor);
  if (theme.font) style.setProperty("--font", theme.font);
}

// Use the page's own font: copy its @font-face rules (URLs made absolute; the browser has the files cached).
function borrowPageFont() {
  try {
    const rules = [];
    for (const sheet of window.parent.document.styleSheets) {
      for (const rule of sheet.cssRules) {
        if (!(rule instanceof window.parent.CSSFontFaceRule) || /KaTeX/.test(rule.cssText)) continue;
        rules.push(rule.cssText.replace(/url\("([^"]+)"\)/g, (_, u) => `url("${new URL(u, sheet.href || location.href)}")`));
      }
    }
    const style = document.createElement("style");
    style.textContent = rules.join("\n");
    document.head.appendChild(style);
  } catch (err) {
    // A stylesheet from another origin cannot be read; the fallback font is fine.
  }
}

borrowPageFont();
new ResizeObserver(fitHeight).observe(document.body);
send("streamlit:componentReady", { apiVersion: 1 });

// ------------------------------------------------------------------------------------------ words
function count(n) { return n.toLocaleString("en-US"); }

function size(bytes) {  // as the server words it (core.data.ingest._size)
  return bytes >= 1024 ** 3 ? `${(bytes / 1024 ** 3).toFixed(1)} GB` : `${Math.round(bytes / 1024 ** 2)} MB`;
}

function say(text, isError) {
  ui.status.textContent = text;
  ui.status.className = isError ? "error" : "";
  fitHeight();
}

function fail(text) {
  say(text, true);
  ui.progress.hidden = true;
  busy = false;
  ui.choose.disabled = disabled;
}

// ------------------------------------------------------------------------------------------ picking
ui.choose.addEventListener("click", () => ui.input.click());
ui.input.addEventListener("change", () => {
  const files = Array.from(ui.input.files || []);
  ui.input.value = "";  // picking the same folder again is a new pick
  if (busy) return;     // one folder at a time (the button is off meanwhile)
  if (!files.length) return fail("The folder you picked holds no files. Pick the folder that holds the class folders.");
  packAndSend(files).catch((err) => fail(`The folder could not be packed: ${err}. Pick it again, or upload it ` +
                                         "as a .zip."));
});

async function packAndSend(files) {
  busy = true;
  ui.choose.disabled = true;
  const paths = files.map((f) => f.webkitRelativePath || f.name);
  const folder = paths[0].split("/")[0] || "folder";
  const uploader = await waitForUploader(15000);  // also brings the limits from the page
  if (!uploader) return fail("The page is not ready to receive the folder. Reload the page and pick it again.");
  const refusal = checkLimits(files, paths);
  if (refusal) return fail(refusal);

  ui.progress.hidden = false;
  const entries = await readAll(files, paths);
  const archive = buildZip(entries, manifest(folder, files, paths, entries));
  const name = `${folder}.zip`;
  say(`Sending ${name} (${count(files.length)} files, ${size(archive.size)}) to the server…`);
  ui.progress.removeAttribute("value");  // indeterminate while the uploader sends it
  sent = { name: name, files: files.length, bytes: archive.size, started: performance.now() };
  sentRound = args.round;
  handOver(uploader, archive, name);
  watchUpload();
}

// Refuse up front, in plain words, what the server would refuse after the whole upload.
function checkLimits(files, paths) {
  const maxFiles = args.max_files || ZIP_MAX_ENTRIES - 1;
  if (files.length > Math.min(maxFiles, ZIP_MAX_ENTRIES - 1)) {
    return `This folder holds ${count(files.length)} files; one upload may hold at most ` +
           `${count(Math.min(maxFiles, ZIP_MAX_ENTRIES - 1))}. Pick a smaller folder, or split it into parts.`;
  }
  const encoder = new TextEncoder();
  let total = 0;
  let archive = 22;  // end-of-archive record
  files.forEach((f, i) => {
    const name = encoder.encode(paths[i]).length;
    total += f.size;
    archive += f.size + 30 + 46 + 2 * name + name + 40;  // headers, and the file's line in the manifest
  });
  const limit = Math.min(args.max_bytes || ZIP_MAX_BYTES, ZIP_MAX_BYTES);
  if (archive > limit) {
    const rule = args.max_bytes && args.max_bytes <= ZIP_MAX_BYTES ? args.max_bytes_rule : "the archive format's limit";
    return `This folder holds ${size(total)} in ${count(files.length)} files; one upload may be at most ` +
           `${size(limit)} (${rule}). Pick a smaller folder, or split it into parts.`;
  }
  return null;
}

function findUploader() {
  if (!args.target_key) return null;  // no render message from the page yet
  const host = window.parent.document.querySelector(`.st-key-${args.target_key}`);
  return host ? host.querySelector('input[type="file"]') : null;
}

// A folder picked while the page is still drawing (or just after a rerun) waits for the uploader to appear.
async function waitForUploader(ms) {
  const until = performance.now() + ms;
  let uploader = findUploader();
  while (!uploader && performance.now() < until) {
    say("Waiting for the page to finish loading…");
    await new Promise((resolve) => setTimeout(resolve, 100));
    uploader = findUploader();
  }
  return uploader;
}

// ------------------------------------------------------------------------------------------ packing
// Read each file once for its CRC-32 (a few at a time), keeping only the checksum, never the bytes.
async function readAll(files, paths) {
  const encoder = new TextEncoder();
  const entries = new Array(files.length);
  let next = 0;
  let done = 0;
  let shown = 0;
  async function worker() {
    while (next < files.length) {
      const i = next++;
      const file = files[i];
      const entry = { name: encoder.encode(paths[i]), path: paths[i], file: file, error: null };
      try {
        const bytes = new Uint8Array(await file.arrayBuffer());
        entry.crc = crc32(bytes);
        entry.size = bytes.length;
        // A file that changed since it was picked is sent as read, not as the (stale) File.
        entry.part = bytes.length === file.size ? file : bytes;
        entry.time = dosTime(new Date(file.lastModified || Date.now()));
      } catch (err) {
        entry.error = `${(err && err.name) || "Error"}: ${(err && err.message) || err}`.slice(0, 200);
      }
      entries[i] = entry;
      done += 1;
      const now = performance.now();
      if (now - shown > 100 || done === files.length) {
        shown = now;
        ui.progress.value = done / files.length;
        say(`Packing ${count(done)} / ${count(files.length)} files…`);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(READERS, files.length) }, worker));
  return entries;
}

function manifest(folder, files, paths, entries) {
  const listed = entries.map((e, i) => (e.error ? { path: paths[i], size: files[i].size, error: e.error }
                                                 : { path: paths[i], size: files[i].size }));
  const text = JSON.stringify({ format: MANIFEST_FORMAT, version: 1, folder: folder, files: listed });
  const bytes = new TextEncoder().encode(text);
  return { name: new TextEncoder().encode(MANIFEST_NAME), part: bytes, size: bytes.length, crc: crc32(bytes),
           time: dosTime(new Date()), error: null };
}

// An uncompressed ("stored") zip: local header + data per file, then the central directory. UTF-8 names.
function buildZip(entries, manifestEntry) {
  const parts = [];
  const central = [];
  let offset = 0;
  for (const e of entries.filter((x) => !x.error).concat([manifestEntry])) {
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    header(local, 4, e);
    parts.push(local, e.name, e.part);
    const record = new DataView(new ArrayBuffer(46));
    record.setUint32(0, 0x02014b50, true);
    record.setUint16(4, 20, true);  // made by: MS-DOS attributes (no Unix mode, so never a link)
    header(record, 6, e);
    record.setUint32(42, offset, true);
    central.push(record, e.name);
    offset += 30 + e.name.length + e.size;
  }
  const directorySize = central.reduce((n, p) => n + p.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  const total = entries.filter((x) => !x.error).length + 1;
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, total, true);
  end.setUint16(10, total, true);
  end.setUint32(12, directorySize, true);
  end.setUint32(16, offset, true);
  return new window.parent.Blob(parts.concat(central, [end]), { type: "application/zip" });
}

// The fields local and central headers share, from version-needed to extra-field length.
function header(view, at, e) {
  view.setUint16(at, 20, true);          // version needed
  view.setUint16(at + 2, 0x0800, true);  // flags: names are UTF-8
  view.setUint16(at + 4, 0, true);       // method: stored
  view.setUint16(at + 6, e.time.time, true);
  view.setUint16(at + 8, e.time.date, true);
  view.setUint32(at + 10, e.crc, true);
  view.setUint32(at + 14, e.size, true);  // compressed size = size
  view.setUint32(at + 18, e.size, true);
  view.setUint16(at + 22, e.name.length, true);
}

function dosTime(d) {
  const year = Math.min(Math.max(d.getFullYear(), 1980), 2107);
  return { time: (d.getHours() << 11) | (d.getMinutes() << 5) | (d.getSeconds() >> 1),
           date: ((year - 1980) << 9) | ((d.getMonth() + 1) << 5) | d.getDate() };
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// ------------------------------------------------------------------------------------------ handing over
// The page's own uploader sends the archive (one request, its own progress and size check): give it the file
// as if the person had picked it there. The component's frame shares the page's origin, so this is allowed;
// the File is made in the page's realm so the uploader's checks see a File of its own.
function handOver(input, blob, name) {
  const page = window.parent;
  const file = new page.File([blob], name, { type: "application/zip", lastModified: Date.now() });
  const transfer = new page.DataTransfer();
  transfer.items.add(file);
  input.files = transfer.files;
  input.dispatchEvent(new page.Event("change", { bubbles: true }));
}

// Follow the hidden uploader's file chip: an error there (a refused size, a dropped connection) is shown here.
function watchUpload() {
  const round = sentRound;
  const timer = setInterval(() => {
    if (sentRound !== round) return clearInterval(timer);  // the server took it (see the render handler)
    const host = window.parent.document.querySelector(`.st-key-${args.target_key}`);
    if (!host) return;
    if (host.querySelector('[data-testid="stFileChipIconError"]')) {
      clearInterval(timer);
      const chip = host.querySelector('[data-testid="stFileChip"]');
      // The chip reads "<name><size>Error: <reason>"; keep the reason.
      const reason = chip ? chip.textContent.replace(sent.name, "").replace(/^\s*[\d.]+\s*[KMG]?B/, "").trim() : "";
      sentRound = null;
      fail(`The upload failed (${reason || "no reason given"}). Pick the folder again, or upload it as a .zip.`);
    } else if (!host.querySelector('[data-testid="stFileChipIconSpinner"]') &&
               host.querySelector('[data-testid="stFileChip"]')) {
      say(`Sent ${sent.name}; the server is unpacking it and checking every image…`);
    }
  }, 250);
}
