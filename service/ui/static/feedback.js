// Merchandiser feedback on the item page's similar grid (docs/DECISIONS.md, "Feedback in the web UI").
// Everything goes through POST /api/v1/feedback with the merchandiser's key (apikey.js: this tab's
// sessionStorage only, never a URL or a cookie). Without a key, no controls are shown and nothing
// is recorded.
(function () {
  var section = document.getElementById("similar");
  var form = document.getElementById("merchandiser");
  if (!section || !form) return;
  var keys = window.LookalikeKey;
  var key = keys.get;
  var query = section.dataset.query;
  var url = section.dataset.feedbackUrl;
  var problem = document.getElementById("feedback-problem");

  function say(message) {
    problem.textContent = message || "";
    problem.hidden = !message;
  }
  function cards() {
    return Array.prototype.slice.call(section.querySelectorAll("#results .card[data-external-id]"));
  }

  // One judgement on (this item, result); resolves with the stored row, rejects with the API's message.
  function send(result, judgement, source, keepalive) {
    return keys.request(url, {
      method: "POST", keepalive: !!keepalive, headers: {"Content-Type": "application/json"},
      body: JSON.stringify({query: query, result: result, judgement: judgement, source: source}),
    });
  }

  function mark(card, judgement) {
    var buttons = card.querySelectorAll(".feedback button");
    buttons.forEach(function (b) { b.disabled = true; });
    send(card.dataset.externalId, judgement, "merchandiser").then(function () {
      say("");
      if (judgement === "dissimilar") {
        card.remove();  // the API hides it for this item from now on
      } else {
        buttons.forEach(function (b) { b.disabled = false; });
        markGood(card);
      }
    }).catch(function (err) {
      say(err.message);
      buttons.forEach(function (b) { b.disabled = false; });
    });
  }

  function markGood(card) {
    card.classList.add("good-match");
    var good = card.querySelector(".feedback .good");
    if (good) good.setAttribute("aria-pressed", "true");
  }

  // The merchandiser's earlier "good match" marks for this item (GET /api/v1/feedback, page by page),
  // so a reload shows them; "not similar" ones need nothing: the API no longer returns those results.
  function showMarks(cursor) {
    var params = new URLSearchParams({query: query, source: "merchandiser", judgement: "similar", limit: "1000"});
    if (cursor) params.set("cursor", cursor);
    fetch(url + "?" + params, {headers: {"X-API-Key": key()}, credentials: "omit"}).then(function (r) {
      return r.ok ? r.json() : null;
    }).then(function (page) {
      if (!page) return;
      var good = {};
      page.judgements.forEach(function (j) { good[j.result] = true; });
      cards().forEach(function (card) { if (good[card.dataset.externalId]) markGood(card); });
      if (page.next_cursor) showMarks(page.next_cursor);
    }).catch(function () {});
  }

  function addControls() {
    cards().forEach(function (card) {
      if (card.querySelector(".feedback")) return;
      var box = document.createElement("span");
      box.className = "feedback";
      [["good", "good match", "similar"], ["bad", "not similar", "dissimilar"]].forEach(function (spec) {
        var b = document.createElement("button");
        b.type = "button";
        b.className = spec[0];
        b.textContent = spec[1];
        b.addEventListener("click", function () { mark(card, spec[2]); });
        box.appendChild(b);
      });
      card.appendChild(box);
    });
  }

  function show(on) {
    if (on) {
      addControls();
      showMarks(null);
    } else {
      section.querySelectorAll("#results .feedback").forEach(function (el) { el.remove(); });
      cards().forEach(function (card) { card.classList.remove("good-match"); });
    }
  }

  // A click on a suggestion is a shopper's "similar" signal; recorded only with a key (the API
  // needs one). keepalive lets the request finish while the browser follows the link.
  section.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("#results .card a");
    if (!link || !key()) return;
    var card = link.closest(".card");
    send(card.dataset.externalId, "similar", "click", true).catch(function () {});
  });

  keys.bindForm(form, say, show);
})();
