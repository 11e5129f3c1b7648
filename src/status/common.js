// What both status pages share (chapter 10's and ssl-farm's): loaded before each page's own
// script. Values go into a page as text (textContent), never as markup.
"use strict";

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
