// Keyboard navigation: left/right arrows follow the page's rel=prev / rel=next links.
document.addEventListener("keydown", function (event) {
  if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
  var target = event.target;
  if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable)) return;
  var rel = event.key === "ArrowLeft" ? "prev" : event.key === "ArrowRight" ? "next" : null;
  if (!rel) return;
  var link = document.querySelector('a[rel="' + rel + '"]');
  if (link) { window.location.href = link.href; }
});

// Toggles: a group of buttons swaps the pictures that follow it between kinds (positive, negative,
// neuron, diverse) or colour scales (own, shared); a picture without that kind keeps its default.
document.addEventListener("click", function (event) {
  var button = event.target.closest ? event.target.closest(".toggle button") : null;
  if (!button) return;
  var group = button.parentNode;
  var key = button.getAttribute("data-show") || button.getAttribute("data-scale");
  var grid = group.nextElementSibling;
  while (grid && !grid.classList.contains("grid")) grid = grid.nextElementSibling;
  Array.prototype.forEach.call(group.querySelectorAll("button"), function (b) {
    b.setAttribute("aria-pressed", b === button ? "true" : "false");
  });
  if (!grid) return;
  Array.prototype.forEach.call(grid.querySelectorAll("img"), function (img) {
    var src = img.getAttribute("data-" + key) || img.getAttribute("data-" + key + "-default");
    img.style.opacity = src ? "" : "0.25";
    if (src) img.src = src;
  });
});

// The jump box: a layer and a unit number lead to that unit's page (a relative link: works offline).
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!form.classList || !form.classList.contains("jump")) return;
  event.preventDefault();
  var layers = JSON.parse(form.querySelector(".jump-units").textContent);
  var layer = layers[Number(form.elements.layer.value)];
  var text = form.elements.unit.value.trim();
  var message = form.querySelector(".jump-message");
  var unit = Number(text);
  if (!layer || text === "" || !Number.isInteger(unit) || unit < 0) {
    message.textContent = "give a unit number, 0 or more";
    return;
  }
  if (layer[2].indexOf(unit) < 0) {
    var shown = layer[2].length ? layer[2].slice(0, 12).join(", ") + (layer[2].length > 12 ? ", …" : "") : "none yet";
    message.textContent = layer[0] + " has no page for unit " + unit + " (units shown: " + shown + ")";
    return;
  }
  message.textContent = "";
  window.location.href = form.getAttribute("data-root") + layer[1] + unit + ".html";
});
