/* hybridspec: a MathJax 2 "Hub" for the ipywidgets HTML manager on a MathJax 3 page.
 *
 * @jupyter-widgets/html-manager 1.0.15 typesets widget labels with MathJax 2's API,
 * MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book loads MathJax 3, which has no
 * Hub, so every widget label threw "Cannot read properties of undefined (reading 'Queue')" and
 * math in a label stayed raw. (MathJax 3 only knows the \( \) delimiters here: write a label's
 * math as r"\(\alpha\)", not "$\alpha$".) This file (listed first in nb_ipywidgets_js, so it only
 * loads on pages with widgets) forwards that call to MathJax 3's typesetPromise. MathJax 3
 * replaces window.MathJax with its own object when it loads, so the Hub is attached to whatever
 * object is assigned to window.MathJax from now on.
 */
(function () {
  "use strict";
  // Widgets render before MathJax has finished starting up: wait for it (up to 20 s).
  function typeset(element, tries) {
    var mj = window.MathJax;
    if (mj && typeof mj.typesetPromise === "function") {
      var ready = (mj.startup && mj.startup.promise) || Promise.resolve();
      ready.then(function () { return mj.typesetPromise([element]); })
           .catch(function () { /* leave the text as it is */ });
    } else if (tries < 200) {
      setTimeout(function () { typeset(element, tries + 1); }, 100);
    }
  }
  function makeHub() {
    return {
      Queue: function (command) {
        if (command && command[2]) { typeset(command[2], 0); }
      }
    };
  }
  function withHub(value) {
    if (value && typeof value === "object" && !value.Hub && value.version) {
      value.Hub = makeHub();
    }
    return value;
  }
  var current = withHub(window.MathJax);
  try {
    Object.defineProperty(window, "MathJax", {
      configurable: true,
      enumerable: true,
      get: function () { return current; },
      set: function (value) { current = withHub(value); }
    });
  } catch (e) { /* a non-configurable MathJax: leave it alone */ }
})();
