// The /duplicates page's "scan" button (docs/DECISIONS.md, "Near-duplicate scans as jobs"): it sends
// POST /api/v1/duplicates/scans with the merchandiser's key in X-API-Key (kept in sessionStorage
// only, shared with the item page's feedback controls), follows the job's progress through
// GET /api/v1/jobs/{id}, and reloads the page to show the new scan once it succeeded.
(function () {
  var form = document.getElementById("scan");
  if (!form) return;
  var STORE = "lookalike.apiKey";
  var input = document.getElementById("api-key");
  var button = document.getElementById("start-scan");
  var problem = document.getElementById("scan-problem");
  var status = document.getElementById("scan-progress");
  var signedOut = form.querySelector(".signed-out");
  var signedIn = form.querySelector(".signed-in");

  function key() {
    try { return sessionStorage.getItem(STORE) || ""; } catch (e) { return ""; }
  }
  function say(message) {
    problem.textContent = message || "";
    problem.hidden = !message;
  }
  function progress(message) {
    status.textContent = message || "";
    status.hidden = !message;
  }
  function show() {
    var on = !!key();
    signedOut.hidden = on;
    signedIn.hidden = !on;
  }
  function signOut() {
    try { sessionStorage.removeItem(STORE); } catch (e) { /* storage off: nothing stored */ }
    show();
  }
  function api(url, options) {
    options = options || {};
    options.credentials = "omit";
    options.headers = Object.assign({"X-API-Key": key()}, options.headers || {});
    return fetch(url, options).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (r.ok) return body;
        if (r.status === 401 || r.status === 403) signOut();  // a bad key: ask for another
        throw new Error((body && body.error && body.error.message) || ("HTTP " + r.status));
      });
    });
  }
  function describe(job) {
    var p = job.progress || {};
    var where = p.phase ? p.phase + (p.total ? " " + p.done + " / " + p.total : "") : job.status;
    return "Scan job " + job.id + ": " + job.status + (job.status === "running" ? " (" + where + ")" : "");
  }
  function follow(id) {
    api("/api/v1/jobs/" + id).then(function (job) {
      progress(describe(job));
      if (job.status === "succeeded") {
        window.location.reload();
      } else if (job.status === "queued" || job.status === "running") {
        window.setTimeout(function () { follow(id); }, 1000);
      } else {
        button.disabled = false;
        say("the scan " + job.status + ": " + (job.error || "no reason given"));
      }
    }).catch(function (err) {
      button.disabled = false;
      say(err.message);
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var value = input.value.trim();
    if (!value) return;
    try {
      sessionStorage.setItem(STORE, value);
    } catch (e) {
      say("this browser keeps no session storage, so the key cannot be kept");
      return;
    }
    input.value = "";
    say("");
    show();
  });
  document.getElementById("sign-out").addEventListener("click", signOut);
  button.addEventListener("click", function () {
    button.disabled = true;
    say("");
    api(form.dataset.scanUrl, {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"})
      .then(function (answer) {
        progress(describe(answer.job));
        follow(answer.job.id);
      }).catch(function (err) {
        button.disabled = false;
        say(err.message);
      });
  });

  form.hidden = false;
  show();
})();
