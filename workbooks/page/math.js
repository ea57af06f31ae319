/* Workbooks math: TeX fragments in .math elements to MathML, in the browser, no network.
   A small TeX subset (fractions, roots, scripts, Greek, operators, accents, matrices,
   environments); anything it cannot read is left as the original text. DOM is built with
   createElementNS/textContent only, so no markup from the document is ever interpreted. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/1998/Math/MathML";
  var SYM = {
    alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ϵ", varepsilon: "ε", zeta: "ζ", eta: "η",
    theta: "θ", vartheta: "ϑ", iota: "ι", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", xi: "ξ", pi: "π",
    varpi: "ϖ", rho: "ρ", varrho: "ϱ", sigma: "σ", varsigma: "ς", tau: "τ", upsilon: "υ", phi: "ϕ",
    varphi: "φ", chi: "χ", psi: "ψ", omega: "ω", Gamma: "Γ", Delta: "Δ", Theta: "Θ", Lambda: "Λ",
    Xi: "Ξ", Pi: "Π", Sigma: "Σ", Upsilon: "Υ", Phi: "Φ", Psi: "Ψ", Omega: "Ω", infty: "∞",
    partial: "∂", nabla: "∇", ell: "ℓ", hbar: "ℏ", emptyset: "∅", aleph: "ℵ", Re: "ℜ", Im: "ℑ"
  };
  var OPS = {
    times: "×", cdot: "⋅", pm: "±", mp: "∓", div: "÷", leq: "≤", le: "≤", geq: "≥", ge: "≥",
    neq: "≠", ne: "≠", approx: "≈", equiv: "≡", sim: "∼", simeq: "≃", cong: "≅", propto: "∝",
    to: "→", rightarrow: "→", leftarrow: "←", Rightarrow: "⇒", Leftarrow: "⇐", leftrightarrow: "↔",
    Leftrightarrow: "⇔", mapsto: "↦", implies: "⟹", iff: "⟺", in: "∈", notin: "∉", ni: "∋",
    subset: "⊂", supset: "⊃", subseteq: "⊆", supseteq: "⊇", cup: "∪", cap: "∩", setminus: "∖",
    forall: "∀", exists: "∃", neg: "¬", land: "∧", wedge: "∧", lor: "∨", vee: "∨", oplus: "⊕",
    otimes: "⊗", circ: "∘", bullet: "∙", star: "⋆", ast: "∗", ldots: "…", cdots: "⋯", vdots: "⋮",
    ddots: "⋱", dots: "…", mid: "∣", parallel: "∥", perp: "⊥", angle: "∠", prime: "′",
    langle: "⟨", rangle: "⟩", lbrace: "{", rbrace: "}", vert: "|", Vert: "‖", lceil: "⌈",
    rceil: "⌉", lfloor: "⌊", rfloor: "⌋", sum: "∑", prod: "∏", int: "∫", iint: "∬", oint: "∮",
    bigcup: "⋃", bigcap: "⋂", coprod: "∐", ll: "≪", gg: "≫", prec: "≺", succ: "≻", models: "⊨",
    vdash: "⊢", top: "⊤", bot: "⊥", uparrow: "↑", downarrow: "↓", colon: ":"
  };
  var BIG = { sum: 1, prod: 1, coprod: 1, bigcup: 1, bigcap: 1, lim: 1, max: 1, min: 1, sup: 1, inf: 1 };
  var FUNCS = ["sin", "cos", "tan", "cot", "sec", "csc", "sinh", "cosh", "tanh", "log", "ln", "lg", "exp",
    "lim", "max", "min", "sup", "inf", "det", "dim", "ker", "gcd", "arg", "deg", "Pr", "arcsin", "arccos", "arctan", "mod"];
  var ACCENTS = { hat: "^", widehat: "^", bar: "¯", overline: "¯", vec: "→", dot: "˙", ddot: "¨", tilde: "~", widetilde: "~" };
  var SPACES = { ",": "0.1667em", ":": "0.2222em", ";": "0.2778em", " ": "0.25em", quad: "1em", qquad: "2em", "!": "0" };

  function el(name, kids, attrs) {
    var e = document.createElementNS(NS, name);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    (kids || []).forEach(function (c) { e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function tok(text) { return el("mi", [text]); }

  function Parser(src) { this.s = src; this.i = 0; this.depth = 0; }
  Parser.prototype.peek = function () { return this.s[this.i]; };
  Parser.prototype.ws = function () { while (this.i < this.s.length && /\s/.test(this.s[this.i])) this.i++; };
  Parser.prototype.command = function () {
    var m = /^\\([a-zA-Z]+|.)/.exec(this.s.slice(this.i));
    if (!m) throw new Error("bad command");
    this.i += m[0].length;
    return m[1];
  };
  Parser.prototype.group = function () {
    this.ws();
    if (this.peek() === "{") {
      this.i++;
      var row = this.expr("}");
      if (this.peek() !== "}") throw new Error("unclosed group");
      this.i++;
      return row;
    }
    return this.atom();
  };
  Parser.prototype.rawGroup = function () {
    this.ws();
    if (this.peek() !== "{") return this.s[this.i++] || "";
    var depth = 0, start = this.i + 1;
    for (; this.i < this.s.length; this.i++) {
      if (this.s[this.i] === "{") depth++;
      else if (this.s[this.i] === "}" && --depth === 0) { this.i++; return this.s.slice(start, this.i - 1); }
    }
    throw new Error("unclosed group");
  };
  Parser.prototype.atom = function () {
    this.ws();
    var c = this.peek();
    if (c === undefined) throw new Error("unexpected end");
    if (c === "{") return this.group();
    if (c === "\\") return this.cmd(this.command());
    this.i++;
    if (/[0-9.]/.test(c)) {
      var n = c;
      while (/[0-9.]/.test(this.peek() || "")) n += this.s[this.i++];
      return el("mn", [n]);
    }
    if (/[a-zA-Z]/.test(c)) return tok(c);
    if (c === "'") return el("mo", ["′"]);
    if (c === "}" || c === "&") throw new Error("unexpected " + c);
    return el("mo", [c]);
  };
  Parser.prototype.cmd = function (name) {
    if (++this.depth > 200) throw new Error("too deep");
    try {
      if (SYM[name]) return tok(SYM[name]);
      if (OPS[name]) return el("mo", [OPS[name]], BIG[name] ? { largeop: "true" } : null);
      if (FUNCS.indexOf(name) >= 0) return el("mi", [name], { mathvariant: "normal" });
      if (SPACES[name] !== undefined) return el("mspace", [], { width: SPACES[name] });
      if (name === "\\") return el("mspace", [], { linebreak: "newline" });
      if ("{}%$#&_".indexOf(name) >= 0) return el("mo", [name]);
      switch (name) {
        case "frac": case "dfrac": case "tfrac": return el("mfrac", [this.group(), this.group()]);
        case "binom": return el("mrow", [el("mo", ["("]), el("mfrac", [this.group(), this.group()], { linethickness: "0" }), el("mo", [")"])]);
        case "sqrt":
          this.ws();
          if (this.peek() === "[") {
            this.i++;
            var idx = this.expr("]");
            this.i++;
            return el("mroot", [this.group(), idx]);
          }
          return el("msqrt", [this.group()]);
        case "text": case "textrm": case "mbox": case "textit": case "textbf":
          return el("mtext", [this.rawGroup()]);
        case "mathrm": case "operatorname": return el("mi", [this.rawGroup()], { mathvariant: "normal" });
        case "mathbf": case "boldsymbol": return el("mrow", [this.group()], { mathvariant: "bold" });
        case "mathit": return el("mrow", [this.group()], { mathvariant: "italic" });
        case "mathbb": return el("mi", [this.rawGroup()], { mathvariant: "double-struck" });
        case "mathcal": return el("mi", [this.rawGroup()], { mathvariant: "script" });
        case "mathfrak": return el("mi", [this.rawGroup()], { mathvariant: "fraktur" });
        case "left": case "right": case "big": case "Big": case "bigg": case "Bigg": case "bigl": case "bigr": case "Bigl": case "Bigr":
          this.ws();
          var d = this.peek() === "\\" ? this.command() : this.s[this.i++];
          var sym = OPS[d] || (d === "." ? "" : d === "{" || d === "}" || d === "|" ? d : d);
          return el("mo", [sym], { stretchy: "true" });
        case "begin": return this.env(this.rawGroup());
        case "limits": case "nolimits": case "displaystyle": case "textstyle": case "nonumber": case "notag": return el("mrow", []);
        case "label": case "tag": this.rawGroup(); return el("mrow", []);
      }
      if (ACCENTS[name]) return el("mover", [this.group(), el("mo", [ACCENTS[name]])], { accent: "true" });
      if (name === "underline") return el("munder", [this.group(), el("mo", ["_"])]);
      throw new Error("unknown command \\" + name);
    } finally { this.depth--; }
  };
  Parser.prototype.env = function (name) {
    var rows = [], cells = [], body = this;
    var endRe = "\\end{" + name + "}";
    for (;;) {
      var cell = this.expr("&", endRe);
      cells.push(el("mtd", [cell]));
      if (this.s.startsWith(endRe, this.i)) { this.i += endRe.length; rows.push(el("mtr", cells)); break; }
      if (this.peek() === "&") { this.i++; continue; }
      if (this.s.startsWith("\\\\", this.i)) { this.i += 2; rows.push(el("mtr", cells)); cells = []; continue; }
      throw new Error("unclosed environment " + name);
    }
    var table = el("mtable", rows);
    var fences = { pmatrix: ["(", ")"], bmatrix: ["[", "]"], Bmatrix: ["{", "}"], vmatrix: ["|", "|"], Vmatrix: ["‖", "‖"], cases: ["{", ""] }[name];
    void body;
    if (fences) return el("mrow", [el("mo", [fences[0]]), table, el("mo", [fences[1]])]);
    return table;
  };
  Parser.prototype.expr = function (stop, stop2) {
    var items = [];
    if (++this.depth > 200) throw new Error("too deep");
    for (;;) {
      this.ws();
      if (this.i >= this.s.length) break;
      var c = this.peek();
      if (c === stop || c === "}" || (stop2 && (this.s.startsWith(stop2, this.i) || this.s.startsWith("\\\\", this.i) || c === "&"))) break;
      if (!stop2 && stop !== "}" && this.s.startsWith("\\\\", this.i) && stop === "&") break;
      var base = this.atom();
      for (;;) {
        this.ws();
        var s = this.peek();
        if (s !== "^" && s !== "_") break;
        this.i++;
        var script = this.group();
        var isBig = base.getAttribute && base.getAttribute("largeop") === "true";
        if (base.localName === "msub" && s === "^") base = el(isBig ? "munderover" : "msubsup", [base.firstChild, base.lastChild, script]);
        else if (base.localName === "msup" && s === "_") base = el(isBig ? "munderover" : "msubsup", [base.firstChild, script, base.lastChild]);
        else base = el(s === "^" ? "msup" : "msub", [base, script]);
      }
      items.push(base);
    }
    this.depth--;
    return el("mrow", items);
  };

  function strip(t) {
    t = t.trim();
    var m = /^\\\(([\s\S]*)\\\)$/.exec(t) || /^\\\[([\s\S]*)\\\]$/.exec(t) || /^\$\$([\s\S]*)\$\$$/.exec(t) || /^\$([\s\S]*)\$$/.exec(t);
    if (m) return m[1];
    var env = /^\\begin\{(equation|align|gather|displaymath|math|multline)\*?\}([\s\S]*)\\end\{\1\*?\}$/.exec(t);
    if (env) return env[1] === "align" ? "\\begin{aligned}" + env[2] + "\\end{aligned}" : env[2];
    return t;
  }

  function render(node) {
    var src = node.textContent || "";
    if (src.length > 20000) return;
    try {
      var p = new Parser(strip(src));
      var row = p.expr(null);
      if (p.i < p.s.length) throw new Error("trailing input");
      var display = node.classList.contains("display");
      var math = el("math", [row], { display: display ? "block" : "inline" });
      var ann = el("semantics", [row.cloneNode(true), el("annotation", [src], { encoding: "application/x-tex" })]);
      math.replaceChildren(ann);
      node.setAttribute("data-tex", src);
      node.replaceChildren(math);
      node.classList.add("math-rendered");
    } catch (e) {
      node.classList.add("math-unrendered");
    }
  }

  function run() {
    var nodes = document.querySelectorAll(".math");
    for (var k = 0; k < nodes.length; k++) render(nodes[k]);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run);
  else run();
})();
