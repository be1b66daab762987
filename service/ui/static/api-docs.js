// /api/v1/docs: Swagger UI (the files of the pinned flask-swagger-ui package, served by the
// app itself, no CDN) rendering the OpenAPI document this server serves. A file, not an
// inline script: the pages' Content-Security-Policy allows none (docs/ARCHITECTURE.md).
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  if (!root || typeof window.SwaggerUIBundle !== "function") {
    return;
  }
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null, // no badge fetched from an outside validator service
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
