// The API page of release-coordinator: Swagger UI (shipped in the package) over /openapi.json.
"use strict";

window.addEventListener("load", () => {
  const url = document.querySelector('meta[name="rc-openapi"]').content;
  document.getElementById("rc-openapi-link").href = url;
  window.ui = window.SwaggerUIBundle({
    url,
    dom_id: "#swagger-ui",
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: false,
    validatorUrl: null, // no request to validator.swagger.io
    persistAuthorization: false, // the token stays in this page's memory
    defaultModelsExpandDepth: 0,
    docExpansion: "list",
    tryItOutEnabled: false,
  });
});
