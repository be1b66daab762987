// The /duplicates page's "scan" button (docs/DECISIONS.md, "Near-duplicate scans as jobs"): it sends
// POST /api/v1/duplicates/scans with the merchandiser's key (apikey.js, shared with the item page's
// feedback controls), follows the job's progress through GET /api/v1/jobs/{id}, and reloads the
// page to show the new scan once it succeeded.
(function () {
  var form = document.getElementById("scan");
  if (!form) return;
  var key = window.LookalikeKey;
  var button = document.getElementById("start-scan");
  var problem = document.getElementById("scan-problem");
  var status = document.getElementById("scan-progress");

  function say(message) {
    problem.textContent = message || "";
    problem.hidden = !message;
  }
  function progress(message) {
    status.textContent = message || "";
    status.hidden = !message;
  }
  function describe(job) {
    var p = job.progress || {};
    var where = p.phase ? p.phase + (p.total ? " " + p.done + " / " + p.total : "") : job.status;
    return "Scan job " + job.id + ": " + job.status + (job.status === "running" ? " (" + where + ")" : "");
  }
  function failed(err) {
    button.disabled = false;
    say(err.message);
  }
  function follow(id) {
    key.request("/api/v1/jobs/" + id).then(function (job) {
      progress(describe(job));
      if (job.status === "succeeded") {
        window.location.reload();
      } else if (job.status === "queued" || job.status === "running") {
        window.setTimeout(function () { follow(id); }, 1000);
      } else {
        failed(new Error("the scan " + job.status + ": " + (job.error || "no reason given")));
      }
    }).catch(failed);
  }

  button.addEventListener("click", function () {
    button.disabled = true;
    say("");
    key.request(form.dataset.scanUrl, {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"})
      .then(function (answer) {
        progress(describe(answer.job));
        follow(answer.job.id);
      }).catch(failed);
  });

  key.bindForm(form, say, function () {});
})();
