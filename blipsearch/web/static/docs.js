// Swagger UI over this server's own OpenAPI document; no validator or anything else from the internet.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
});
