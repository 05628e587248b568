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
  if (!button || button.hasAttribute("data-sort")) return;
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

// Sorting a layer's grid: by unit order, or by an interpretability score (highest first; units without it last).
document.addEventListener("click", function (event) {
  var button = event.target.closest ? event.target.closest(".sort button[data-sort]") : null;
  if (!button) return;
  var group = button.parentNode;
  var key = button.getAttribute("data-sort");
  var grid = group.nextElementSibling;
  while (grid && !grid.classList.contains("grid")) grid = grid.nextElementSibling;
  Array.prototype.forEach.call(group.querySelectorAll("button"), function (b) {
    b.setAttribute("aria-pressed", b === button ? "true" : "false");
  });
  if (!grid) return;
  var figures = Array.prototype.slice.call(grid.children);
  function value(figure) {
    var text = figure.getAttribute("data-" + key);
    return text === null ? null : Number(text);
  }
  figures.sort(function (a, b) {
    var order = Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order"));
    if (key === "order") return order;
    var va = value(a), vb = value(b);
    if (va === null || vb === null) return va === null && vb === null ? order : va === null ? 1 : -1;
    return vb - va || order;
  });
  figures.forEach(function (figure) { grid.appendChild(figure); });
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

// Kernels: a unit page carries its kernel's layout ("channels rows columns per-row cell gap") and values;
// each weight becomes one cell on the layer's blue-white-red scale, its value on hover
// (gallery/render.py's kernel_cells does the same arithmetic).
(function () {
  var RDBU = [[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77], [103, 0, 31]];
  function hex(n) { return (n < 16 ? "0" : "") + n.toString(16); }
  function diverging(value, vmax) {
    var t = vmax <= 0 ? 0.5 : Math.min(Math.max((value / vmax + 1) / 2, 0), 1);
    var pos = t * (RDBU.length - 1), i = Math.min(Math.floor(pos), RDBU.length - 2), f = pos - i;
    var a = RDBU[i], b = RDBU[i + 1], out = "#";
    for (var k = 0; k < 3; k++) out += hex(Math.round(a[k] + (b[k] - a[k]) * f));
    return out;
  }
  var NS = "http://www.w3.org/2000/svg";
  Array.prototype.forEach.call(document.querySelectorAll("svg.kernel[data-values]"), function (svg) {
    var l = svg.getAttribute("data-layout").split(" ").map(Number);
    var c = l[0], kh = l[1], kw = l[2], perRow = l[3], cell = l[4], gap = l[5];
    var vmax = Number(svg.getAttribute("data-vmax"));
    var texts = svg.getAttribute("data-values").split(" ");
    var frag = document.createDocumentFragment();
    for (var ch = 0; ch < c; ch++) {
      var r = Math.floor(ch / perRow), q = ch % perRow;
      for (var y = 0; y < kh; y++) {
        for (var x = 0; x < kw; x++) {
          var text = texts[(ch * kh + y) * kw + x];
          var rect = document.createElementNS(NS, "rect");
          rect.setAttribute("x", q * (kw * cell + gap) + x * cell);
          rect.setAttribute("y", r * (kh * cell + gap) + y * cell);
          rect.setAttribute("width", cell);
          rect.setAttribute("height", cell);
          rect.setAttribute("fill", diverging(Number(text), vmax));
          var title = document.createElementNS(NS, "title");
          title.textContent = "input " + ch + ", row " + y + ", column " + x + ": " + text;
          rect.appendChild(title);
          frag.appendChild(rect);
        }
      }
    }
    svg.appendChild(frag);
  });
})();
