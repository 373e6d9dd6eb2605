/**
 * Safe DOM building. Every string becomes a text node or an attribute value set through
 * the DOM API: nothing is ever parsed as HTML, so untrusted text (completions, prompts,
 * job names, error messages) is always shown literally.
 * @module dom
 */

const SVG_NS = "http://www.w3.org/2000/svg";

/**
 * Append children (nodes, strings, numbers, arrays, null/false skipped) to a parent.
 * @param {Node} parent
 * @param {...any} children
 * @returns {Node} the parent
 */
export function append(parent, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key.startsWith("on")) {
      throw new Error(`refusing to set the ${key} attribute from a string`);
    } else if (key === "class") {
      el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "style" && typeof value === "object") {
      Object.assign(el.style, value);
    } else if (key in el && typeof value !== "string" && !(el instanceof SVGElement)) {
      el[key] = value; // properties such as checked, disabled, value
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

/**
 * Create an HTML element.
 * @param {string} tag element name, e.g. "div"
 * @param {Object} [attrs] attributes; `onclick`-style keys take functions; `class` may be a list
 * @param {...any} children nodes or strings (strings become text nodes)
 * @returns {HTMLElement}
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  return append(el, ...children);
}

/**
 * Create an SVG element (same contract as {@link h}).
 * @param {string} tag e.g. "path"
 * @param {Object} [attrs]
 * @param {...any} children
 * @returns {SVGElement}
 */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  return append(el, ...children);
}

/**
 * Replace all children of `parent`.
 * @param {Node} parent
 * @param {...any} children
 * @returns {Node}
 */
export function replace(parent, ...children) {
  parent.replaceChildren();
  return append(parent, ...children);
}
