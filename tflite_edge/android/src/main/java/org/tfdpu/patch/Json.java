package org.tfdpu.patch;

import java.math.BigInteger;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small, strict JSON reader for the device state file: objects, arrays,
 * strings, integers (BigInteger), other numbers (Double), true, false, null.
 */
final class Json {
  private static final int MAX_DEPTH = 16;
  private final String text;
  private int at;

  private Json(String text) {
    this.text = text;
  }

  static Object parse(String text) throws IllegalArgumentException {
    Json json = new Json(text);
    Object value = json.value(0);
    json.space();
    if (json.at != text.length()) {
      throw new IllegalArgumentException("extra data after the value");
    }
    return value;
  }

  private void space() {
    while (at < text.length() && " \t\r\n".indexOf(text.charAt(at)) >= 0) {
      at++;
    }
  }

  private char peek() {
    if (at >= text.length()) {
      throw new IllegalArgumentException("unexpected end");
    }
    return text.charAt(at);
  }

  private void expect(char c) {
    if (peek() != c) {
      throw new IllegalArgumentException("expected '" + c + "' at " + at);
    }
    at++;
  }

  private Object value(int depth) {
    if (depth > MAX_DEPTH) {
      throw new IllegalArgumentException("nested too deeply");
    }
    space();
    char c = peek();
    if (c == '{') {
      at++;
      Map<String, Object> out = new LinkedHashMap<String, Object>();
      space();
      if (peek() == '}') {
        at++;
        return out;
      }
      while (true) {
        space();
        String key = string();
        space();
        expect(':');
        out.put(key, value(depth + 1));
        space();
        if (peek() == ',') {
          at++;
          continue;
        }
        expect('}');
        return out;
      }
    }
    if (c == '[') {
      at++;
      List<Object> out = new ArrayList<Object>();
      space();
      if (peek() == ']') {
        at++;
        return out;
      }
      while (true) {
        out.add(value(depth + 1));
        space();
        if (peek() == ',') {
          at++;
          continue;
        }
        expect(']');
        return out;
      }
    }
    if (c == '"') {
      return string();
    }
    for (String word : new String[] {"true", "false", "null"}) {
      if (text.startsWith(word, at)) {
        at += word.length();
        return word.equals("null") ? null : Boolean.valueOf(word);
      }
    }
    return number();
  }

  private String string() {
    expect('"');
    StringBuilder out = new StringBuilder();
    while (true) {
      char c = peek();
      at++;
      if (c == '"') {
        return out.toString();
      }
      if (c == '\\') {
        char e = peek();
        at++;
        switch (e) {
          case '"': case '\\': case '/': out.append(e); break;
          case 'b': out.append('\b'); break;
          case 'f': out.append('\f'); break;
          case 'n': out.append('\n'); break;
          case 'r': out.append('\r'); break;
          case 't': out.append('\t'); break;
          case 'u':
            if (at + 4 > text.length()) {
              throw new IllegalArgumentException("bad escape");
            }
            out.append((char) Integer.parseInt(text.substring(at, at + 4), 16));
            at += 4;
            break;
          default: throw new IllegalArgumentException("bad escape");
        }
      } else if (c < 0x20) {
        throw new IllegalArgumentException("control character in a string");
      } else {
        out.append(c);
      }
    }
  }

  private Object number() {
    int start = at;
    if (peek() == '-') {
      at++;
    }
    boolean integral = true;
    while (at < text.length() && "0123456789.eE+-".indexOf(text.charAt(at)) >= 0) {
      char c = text.charAt(at);
      if (c == '.' || c == 'e' || c == 'E') {
        integral = false;
      }
      at++;
    }
    String digits = text.substring(start, at);
    if (digits.isEmpty() || digits.equals("-")) {
      throw new IllegalArgumentException("unexpected character at " + start);
    }
    return integral ? (Object) new BigInteger(digits) : (Object) Double.valueOf(digits);
  }
}
