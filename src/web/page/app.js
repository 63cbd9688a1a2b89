// Panda status page: one EventSource, DOM built with textContent only (never innerHTML),
// so nothing a user said or an agent sent can become markup.
"use strict";
(function () {
  const turns = new Map();
  // Off this machine the page needs the API token for transcripts and answers (it shows
  // only the state without it): open it as http://host:8080/#token=TOKEN. The fragment
  // never leaves the browser; the token goes as RFC 6750's access_token parameter,
  // because an EventSource cannot send an Authorization header.
  const tokenMatch = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  const auth = tokenMatch ? "?access_token=" + encodeURIComponent(decodeURIComponent(tokenMatch[1])) : "";
  const $ = (id) => document.getElementById(id);
  const ms = (v) => (v === null || v === undefined ? "" : v + " ms");

  function setState(s) {
    const el = $("state");
    el.textContent = s === "follow_up" ? "listening for a follow-up" : s;
    el.className = "state " + s;
    document.body.dataset.state = s;
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  function renderTurn(t) {
    turns.set(t.id, Object.assign(turns.get(t.id) || {}, t));
    const cur = turns.get(t.id);
    let tr = document.getElementById("turn-" + t.id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.id = "turn-" + t.id;
      $("turns").tBodies[0].prepend(tr);
    }
    tr.replaceChildren();
    cell(tr, String(cur.id), "num");
    cell(tr, cur.at || "");
    cell(tr, cur.transcript || "", "heard");
    cell(tr, (cur.answer || cur.live || "") + (cur.interrupted ? " [interrupted]" : ""), cur.interrupted ? "answer cut" : "answer");
    cell(tr, cur.route || "");
    cell(tr, ms(cur.stt_ms), "num");
    cell(tr, ms(cur.llm_first_token_ms), "num");
    cell(tr, ms(cur.tts_first_audio_ms), "num");
    cell(tr, ms(cur.first_audio_ms), "num");
    const rows = $("turns").tBodies[0].rows;
    while (rows.length > 20) rows[rows.length - 1].remove();
  }

  function log(line) {
    const li = document.createElement("li");
    li.textContent = (line.at ? line.at + "  " : "") + line.text;
    $("log").prepend(li);
    while ($("log").children.length > 50) $("log").lastChild.remove();
  }

  // What the services list shows: the last snapshot, updated by live messages and by a
  // slow poll of /api/status (agent health is checked in the background, not per turn).
  let svc = { llm: null, agents: [], echo: null, stt: null, tts: null, wyoming: null, satellite: null };

  function services(snap) {
    svc = { llm: snap.llm || null, agents: snap.agents || [], echo: snap.echo || svc.echo, stt: snap.stt || svc.stt, tts: snap.tts || svc.tts, wyoming: snap.wyoming || svc.wyoming, satellite: snap.satellite || svc.satellite };
    const ul = $("services");
    ul.replaceChildren();
    const llm = document.createElement("li");
    const ok = snap.llm && snap.llm.last_ok;
    llm.className = ok === true ? "ok" : ok === false ? "bad" : "unknown";
    llm.textContent = "LLM " + ((snap.llm && snap.llm.url) || "") + ": " +
      (ok === true ? "answering" : ok === false ? "failed (" + (snap.llm.last_error || "") + ")" : "not used yet");
    ul.appendChild(llm);
    for (const a of snap.agents || []) {
      const li = document.createElement("li");
      li.className = a.breaker === "open" ? "bad" : a.healthy === true ? "ok" : a.healthy === false ? "bad" : "unknown";
      li.textContent = a.name + ": " + (a.healthy === true ? "healthy" : a.healthy === false ? "unhealthy" : "unchecked") + ", breaker " + a.breaker;
      ul.appendChild(li);
    }
    for (const [name, s, local] of [["Speech-to-text", svc.stt, "the local Whisper"], ["Text-to-speech", svc.tts, "Kokoro"]]) {
      if (!s || s.backend !== "wyoming") continue;
      const li = document.createElement("li");
      li.className = s.breaker === "open" ? "bad" : s.last_error && !s.remote_ok ? "bad" : "ok";
      li.textContent = name + " " + s.url + ": breaker " + s.breaker + ", " + s.remote_ok +
        " remote, " + s.fallbacks + " by " + local + (s.last_error ? " (last error: " + s.last_error + ")" : "");
      ul.appendChild(li);
    }
    const w = svc.wyoming;
    if (w && w.connections > 0) {
      const li = document.createElement("li");
      li.className = "ok";
      li.textContent = "Wyoming server: " + w.connections + " connections (" + w.refused + " refused, " +
        w.malformed + " malformed), " + w.transcripts + " transcripts, " + w.syntheses + " syntheses, " +
        w.detections + " wake detections";
      ul.appendChild(li);
    }
    const sat = svc.satellite;
    if (sat) {
      const li = document.createElement("li");
      li.className = sat.state === "running" ? "ok" : sat.state === "waiting" ? "unknown" : "bad";
      const where = sat.hub ? "hub " + sat.hub + " " + sat.state : "no hub connected (Panda answers itself)";
      li.textContent = "Satellite: " + where + "; " + sat.sent + " questions sent, " + sat.played +
        " answers played, " + sat.failed + " unanswered, " + sat.local + " answered here";
      ul.appendChild(li);
    }
    const e = svc.echo;
    if (e && e.active) {
      const li = document.createElement("li");
      li.className = "ok";
      li.textContent = "Echo canceller: ERLE " + e.erle_db + " dB, delay " + e.delay_ms + " ms, " +
        e.path_changes + " echo-path changes, " + e.reference_dropped + " reference frames dropped, " +
        e.self_wakes_ignored + " self-wakes ignored";
      ul.appendChild(li);
    }
  }

  function onMessage(m) {
    switch (m.type) {
      case "snapshot":
        setState(m.state);
        (m.turns || []).forEach(renderTurn);
        $("log").replaceChildren();
        (m.log || []).forEach(log);
        services(m);
        break;
      case "state": setState(m.state); break;
      case "turn": renderTurn(m.turn); break;
      case "text": {
        const t = turns.get(m.turn) || { id: m.turn };
        t.live = (t.live || "") + m.text;
        renderTurn(t);
        break;
      }
      case "llm":
        services({ llm: Object.assign({}, svc.llm, { last_ok: m.last_ok, last_error: m.last_error }), agents: svc.agents });
        break;
      case "breaker":
        services({ llm: svc.llm, agents: svc.agents.map((a) => a.name === m.agent ? Object.assign({}, a, { breaker: m.state }) : a),
          stt: m.agent === "stt" && svc.stt ? Object.assign({}, svc.stt, { breaker: m.state }) : svc.stt,
          tts: m.agent === "tts" && svc.tts ? Object.assign({}, svc.tts, { breaker: m.state }) : svc.tts });
        break;
      case "log": log(m); break;
      case "lagged": log({ text: "(skipped " + m.skipped + " updates)" }); break;
    }
  }

  function connect() {
    const es = new EventSource("/api/events" + auth);
    es.onopen = () => { $("conn").textContent = "live"; };
    es.onmessage = (e) => { try { onMessage(JSON.parse(e.data)); } catch (err) { /* ignore a bad message */ } };
    es.onerror = () => { $("conn").textContent = "reconnecting…"; };
  }
  function poll() {
    fetch("/api/status" + auth, { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : null))
      .then((snap) => { if (snap) services(snap); })
      .catch(() => { /* the feed's reconnect shows the outage */ });
  }
  connect();
  setInterval(poll, 10000);
})();
