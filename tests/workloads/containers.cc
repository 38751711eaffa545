// Standard C++ containers and new/delete with allocation counts known exactly from
// libstdc++'s growth rules (see containers.expected.json).  No iostream: its static
// initialisation would allocate.
//
// SPDX-License-Identifier: MIT OR Apache-2.0

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "workload.h"

namespace ns {

// 24 bytes: what `new Widget` asks for.
class Widget {
public:
        explicit Widget(int id) : id_(id) {}
        ~Widget() { delete[] data_; }
        Widget(const Widget &) = delete;
        Widget &operator=(const Widget &) = delete;

        // Replaces the payload with n ints: one `new int[n]` of 4 * n bytes (int has no
        // destructor, so new[] adds no cookie).
        WL_FRAME void build(int n);

private:
        int *data_ = nullptr;
        std::size_t size_ = 0;
        int id_;
};

void Widget::build(int n)
{
        delete[] data_;
        data_ = new int[n];
        size_ = static_cast<std::size_t>(n);
        for (int i = 0; i < n; i++)
                data_[i] = id_ + i;
        wl_keep(data_);
}

} // namespace ns

static_assert(sizeof(ns::Widget) == 24, "the expected byte counts assume a 24-byte Widget");

// Never deleted: a leak.
static ns::Widget *kept_widget;

// push_back grows the capacity 1, 2, 4, ..., 128: 8 allocations of 4 * capacity bytes,
// 4 * 255 = 1020 bytes in all; each growth frees the previous buffer.
WL_FRAME static void grow_vector()
{
        std::vector<int> v;
        for (int i = 0; i < 100; i++)
                v.push_back(i);
        wl_keep(v.data());
}

// Beyond the 15-char small-string buffer: 40 chars take capacity + 1 = 41 bytes;
// appending 30 needs 70, which libstdc++ rounds up to twice the old capacity, 80: 81 bytes.
WL_FRAME static void append_string()
{
        std::string s(40, 'x');
        s.append(30, 'y');
        wl_keep(s.data());
}

// One 40-byte node (32-byte red-black node header + pair<const int, int>) per key.
WL_FRAME static void fill_map()
{
        std::map<int, int> m;
        for (int i = 0; i < 50; i++)
                m[i] = i * i;
        wl_keep(&m);
}

// Two 24-byte widgets, payloads of 10, 20 and 5 ints; the second widget leaks.
WL_FRAME static void make_widgets()
{
        ns::Widget *a = new ns::Widget(1);
        a->build(10);
        a->build(20);
        wl_keep(a);
        delete a;

        ns::Widget *b = new ns::Widget(2);
        b->build(5);
        kept_widget = b;
}

int main()
{
        grow_vector();
        append_string();
        fill_map();
        make_widgets();
        wl_keep(&kept_widget);
        return 0;
}
