// Preview the chosen photo, and keep running jobs' progress current.
(function () {
  var input = document.getElementById("image");
  var preview = document.getElementById("preview");
  if (input && preview) {
    input.addEventListener("change", function () {
      if (input.files && input.files[0]) {
        preview.src = URL.createObjectURL(input.files[0]);
        preview.hidden = false;
      }
    });
  }
  if (!document.querySelector(".job.live")) return;
  function poll() {
    var live = document.querySelectorAll(".job.live");
    var pending = 0;
    live.forEach(function (el) {
      pending += 1;
      fetch(el.dataset.jobUrl).then(function (r) { return r.json(); }).then(function (job) {
        el.querySelector('[data-field="status"]').textContent = job.status;
        el.querySelector('[data-field="progress"]').textContent =
          (job.progress.phase ? job.progress.phase + " " : "") + job.progress.done + " / " + job.progress.total;
        var bar = el.querySelector("progress");
        bar.max = job.progress.total || 1;
        bar.value = job.progress.done;
        if (job.status === "succeeded" || job.status === "failed") el.classList.remove("live");
      }).catch(function () {});
    });
    if (pending) setTimeout(poll, 2000);
  }
  setTimeout(poll, 2000);
})();
