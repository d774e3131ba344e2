// rrm's client script: the keyboard on the rating screen, auto-advance, following jobs.
// Written for rrm; no libraries. The page works as plain HTML forms; this adds the keys.
(function () {
  'use strict';

  var body = document.body;
  var page = body.dataset.page;

  function $(selector) { return document.querySelector(selector); }

  // --- time to judge: ms from the page shown to the answer, sent with every answer form ---
  var shownAt = window.performance ? window.performance.now() : Date.now();
  function now() { return window.performance ? window.performance.now() : Date.now(); }
  window.addEventListener('pageshow', function (e) { if (e.persisted) shownAt = now(); });
  function stamp(f) {
    var ms = f && f.elements ? f.elements.namedItem('judge_ms') : null;
    if (ms) ms.value = String(Math.max(0, Math.round(now() - shownAt)));
  }
  document.addEventListener('submit', function (e) { stamp(e.target); }, true);

  // --- auto-advance: a per-browser setting, default from the server ---
  function autoAdvance() {
    var stored = null;
    try { stored = window.localStorage.getItem('rrm.autoAdvance'); } catch (e) { stored = null; }
    if (stored === 'on') return true;
    if (stored === 'off') return false;
    return body.dataset.autoAdvance !== 'false';
  }
  function setAutoAdvance(on) {
    try { window.localStorage.setItem('rrm.autoAdvance', on ? 'on' : 'off'); } catch (e) { /* private mode */ }
    var state = $('#advance-state');
    if (state) state.textContent = on ? 'on' : 'off';
  }

  // --- grounding highlights: a per-browser setting, off by default ---
  function grounding() {
    try { return window.localStorage.getItem('rrm.grounding') === 'on'; } catch (e) { return false; }
  }
  function setGrounding(on) {
    try { window.localStorage.setItem('rrm.grounding', on ? 'on' : 'off'); } catch (e) { /* private mode */ }
    body.classList.toggle('show-grounding', on);
    var state = $('#grounding-state');
    if (state) state.textContent = on ? 'on' : 'off';
  }
  setGrounding(grounding());

  // --- jobs: follow a running job, reload when it ends ---
  var jobHolder = document.querySelector('[data-job]');
  if (jobHolder) {
    var jobId = jobHolder.dataset.job;
    var poll = function () {
      fetch('/api/jobs/' + encodeURIComponent(jobId), { credentials: 'same-origin' })
        .then(function (r) { return r.json(); })
        .then(function (job) {
          var status = $('#job-status');
          if (status && job.total) status.textContent = job.done + '/' + job.total;
          if (job.state === 'running') {
            window.setTimeout(poll, 1000);
          } else if (page === 'empty') {
            window.location.replace('/next?job=' + encodeURIComponent(jobId));
          } else {
            window.location.replace(window.location.pathname + (job.state === 'failed' ? '?job=' + encodeURIComponent(jobId) : ''));
          }
        })
        .catch(function () { window.setTimeout(poll, 2000); });
    };
    window.setTimeout(poll, 1000);
  }
  var refreshing = document.querySelector('[data-refresh]');
  if (refreshing) {
    window.setTimeout(function () { window.location.reload(); }, 1000 * Number(refreshing.dataset.refresh));
  }

  // --- the rating screen ---
  var form = $('#answer');
  var rate = $('#rate');
  var asked = !!(rate && rate.dataset.asked);   // a question of a running summary: comparisons only
  var prompt = $('#prompt');
  var editor = $('#editor');
  var text = $('#text');
  var mode = null;      // null, 'confidence', 'likert-side', 'likert', 'edit-side', 'critique-side', 'text', 'sent'
  var likert = [];
  var LIKERT = ['coverage', 'accuracy', 'coherence', 'overall'];
  var idlePrompt = prompt ? prompt.innerHTML : '';

  if (form) setAutoAdvance(autoAdvance());

  function say(message) { if (prompt) prompt.textContent = message; }
  function field(name) { return form.elements.namedItem(name); }
  function mark(side) {
    document.querySelectorAll('.cand').forEach(function (c) {
      c.classList.toggle('chosen', side !== null && c.dataset.side === String(side));
    });
  }
  function candidate(side) { return $('#cand-' + side); }

  function reset() {
    mode = null;
    likert = [];
    mark(null);
    if (editor) editor.hidden = true;
    if (text) { text.value = ''; text.blur(); }
    if (prompt) prompt.innerHTML = idlePrompt;
  }

  function submit(kind) {
    field('kind').value = kind;
    field('advance').value = autoAdvance() ? '1' : '0';
    mode = 'sent';
    say('Saving…');
    stamp(form);
    form.submit();
  }

  function openEditor(kind, label, initial, side) {
    mode = 'text';
    field('kind').value = kind;
    field('side').value = side || '';
    $('#editor-label').textContent = label;
    editor.hidden = false;
    text.value = initial;
    text.focus();
    say(label + ' — Ctrl+Enter saves, Esc cancels.');
  }

  function submitText() {
    if (!text.value.trim()) { say('The text is empty; type something, or Esc to cancel.'); return; }
    submit(field('kind').value);
  }

  function toggleRaw() {
    var raw = $('#input-raw');
    var pretty = $('#input-pretty');
    if (!raw || !pretty) return;
    raw.hidden = !raw.hidden;
    pretty.hidden = !raw.hidden;
  }

  function toggleHelp() {
    var help = $('#help');
    if (help) help.hidden = !help.hidden;
  }

  function submitForm(selector) {
    var f = $(selector);
    if (f) { mode = 'sent'; stamp(f); f.submit(); return true; }
    return false;
  }

  // Keys that work on every page.
  function global(key) {
    switch (key) {
      case 'n': window.location.href = '/next'; return true;
      case '?': toggleHelp(); return true;
      case 'u': { var up = $('#parent-link'); if (up) { window.location.href = up.href; return true; } return false; }
      case 'r': toggleRaw(); return true;
      case 'g': setGrounding(!grounding()); return true;
      case 'd': return submitForm('#draw') || submitForm('.draw-many');
      default: return false;
    }
  }

  function rating(key) {
    switch (mode) {
      case 'sent':
        return true;
      case 'confidence':
        if (/^[1-9]$/.test(key)) { field('confidence').value = key; submit('comparison'); return true; }
        if (key === 'Enter') { field('confidence').value = '5'; submit('comparison'); return true; }
        return false;
      case 'likert-side':
        if (key === '1' || key === '2') {
          field('side').value = key;
          mark(key);
          mode = 'likert';
          likert = [];
          say('Summary ' + key + ': coverage 1–7?');
          return true;
        }
        return false;
      case 'likert':
        if (/^[1-7]$/.test(key)) {
          likert.push(key);
          if (likert.length === LIKERT.length) {
            LIKERT.forEach(function (name, i) { field(name).value = likert[i]; });
            submit('likert');
          } else {
            say('Summary ' + field('side').value + ': ' + LIKERT.slice(0, likert.length).map(function (n, i) { return n + ' ' + likert[i]; }).join(', ') + '; ' + LIKERT[likert.length] + ' 1–7?');
          }
          return true;
        }
        return false;
      case 'edit-side':
        if (key === '1' || key === '2') {
          mark(key);
          openEditor('correction', 'Edit summary ' + key, candidate(key).dataset.text, key);
          return true;
        }
        return false;
      case 'critique-side':
        if (key === '1' || key === '2') {
          mark(key);
          openEditor('critique', 'Critique of summary ' + key, '', key);
          return true;
        }
        return false;
      default:
        break;
    }
    if (asked && 'lecw'.indexOf(key) >= 0) {
      say('A running summary asks only which summary is better: 1, 2 or t (s: no answer).');
      return true;
    }
    switch (key) {
      case '1':
      case '2':
      case 't':
        field('prefer').value = key === '1' ? 'a' : key === '2' ? 'b' : 'tie';
        mark(key === 't' ? null : key);
        mode = 'confidence';
        say((key === 't' ? 'A tie' : 'Summary ' + key + ' is better') + '. How sure? 1 (a guess) … 9 (certain); Enter = 5; Esc = back.');
        return true;
      case 'l': mode = 'likert-side'; say('Likert ratings of which summary, 1 or 2?'); return true;
      case 'e': mode = 'edit-side'; say('Edit which summary, 1 or 2?'); return true;
      case 'c': mode = 'critique-side'; say('Critique which summary, 1 or 2?'); return true;
      case 'w': openEditor('demonstration', 'Your own summary of the input', '', ''); return true;
      case 's': return submitForm('#skip');
      case 'a': setAutoAdvance(!autoAdvance()); return true;
      default: return global(key);
    }
  }

  // --- the decomposition comparison: 1 / 2 / t, then a confidence (Enter = the box) ---
  var decomp = $('#decomp-answer');
  var decompPick = null;
  function decompSubmit(prefer) {
    var conf = decomp.elements.namedItem('confidence');
    var hidden = document.createElement('input');
    hidden.type = 'hidden';
    hidden.name = 'prefer';
    hidden.value = prefer;
    decomp.appendChild(hidden);
    mode = 'sent';
    stamp(decomp);
    say('Saving…');
    if (conf && !/^[1-9]$/.test(conf.value)) conf.value = '5';
    decomp.submit();
  }
  function decompKey(key) {
    if (mode === 'sent') return true;
    var conf = decomp.elements.namedItem('confidence');
    if (decompPick !== null) {
      if (/^[1-9]$/.test(key)) { conf.value = key; decompSubmit(decompPick); return true; }
      if (key === 'Enter') { decompSubmit(decompPick); return true; }
      return false;
    }
    if (key === '1' || key === '2' || key === 't') {
      decompPick = key;
      mark(key === 't' ? null : key);
      say((key === 't' ? 'A tie' : 'Decomposition ' + key + ' is better') + '. How sure? 1 (a guess) … 9 (certain); Enter = ' + conf.value + '; Esc = back.');
      return true;
    }
    return global(key);
  }

  document.addEventListener('keydown', function (e) {
    if (decomp) {
      if (e.key === 'Escape') { decompPick = null; mark(null); say('Keys: 1, 2 or t, then a confidence 1–9.'); return; }
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      var target = e.target;
      if (target && target.closest && target.closest('input, textarea, select')) return;
      if (decompKey(e.key)) e.preventDefault();
      return;
    }
    if (mode === 'text') {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submitText(); }
      else if (e.key === 'Escape') { e.preventDefault(); reset(); }
      return;
    }
    if (e.key === 'Escape') { reset(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && t.closest && t.closest('input, textarea, select')) return;
    var handled = form ? rating(e.key) : global(e.key);
    if (handled) e.preventDefault();
  });

  // Buttons that stand for keys (for the mouse).
  document.querySelectorAll('button[data-key]').forEach(function (b) {
    b.addEventListener('click', function () {
      var key = b.dataset.key;
      if (form) rating(key); else global(key);
    });
  });
})();
