// The merchandiser's API key in the web UI (docs/DECISIONS.md, "Feedback in the web UI"), shared by
// the item page's feedback controls and the /duplicates page's scan button. The key lives in this
// tab's sessionStorage only (never in a URL or a cookie) and is sent as X-API-Key; an answer of 401
// or 403 forgets it, so the page asks for another.
window.LookalikeKey = (function () {
  var STORE = "lookalike.apiKey";
  var onChange = function () {};

  function get() {
    try { return sessionStorage.getItem(STORE) || ""; } catch (e) { return ""; }
  }

  function signOut() {
    try { sessionStorage.removeItem(STORE); } catch (e) { /* storage off: nothing stored */ }
    onChange();
  }

  // fetch with the key; resolves with the JSON body, rejects with the API's own error message.
  function request(url, options) {
    options = Object.assign({}, options || {}, {credentials: "omit"});
    options.headers = Object.assign({"X-API-Key": get()}, options.headers || {});
    return fetch(url, options).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (r.ok) return body;
        if (r.status === 401 || r.status === 403) signOut();  // a bad key: ask for another
        throw new Error((body && body.error && body.error.message) || ("HTTP " + r.status));
      });
    });
  }

  // Wire a page's sign-in form (.signed-out holding #api-key, .signed-in holding #sign-out):
  // ``changed`` runs whenever the key comes or goes; ``say`` shows a problem (or "" to clear it).
  function bindForm(form, say, changed) {
    var input = document.getElementById("api-key");
    var signedOut = form.querySelector(".signed-out");
    var signedIn = form.querySelector(".signed-in");
    onChange = function () {
      var on = !!get();
      signedOut.hidden = on;
      signedIn.hidden = !on;
      changed(on);
    };
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
      onChange();
    });
    document.getElementById("sign-out").addEventListener("click", signOut);
    form.hidden = false;
    onChange();
  }

  return {get: get, signOut: signOut, request: request, bindForm: bindForm};
})();
