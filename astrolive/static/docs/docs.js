// The API reference at /docs: Swagger UI (from npm, served by the app; no CDN) over the app's own
// OpenAPI document. No validator badge: it would call validator.swagger.io.
window.ui = window.SwaggerUIBundle({
  url: "/v1/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  tryItOutEnabled: false,
  displayRequestDuration: true,
  persistAuthorization: false,
  onComplete: () => document.body.setAttribute("data-ready", "true"),
});
