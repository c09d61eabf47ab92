// Starts Swagger UI on this server's OpenAPI document (a file, not inline: the CSP forbids inline script).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // never call out to validator.swagger.io
  });
});
